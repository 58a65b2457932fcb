"""Loopback TLS material persists and stays private; the credential comes from the setting."""
from __future__ import annotations

import socket
import ssl
import stat

import pytest

from local_emulator import tls as loopback_tls
from shared import credentials


def test_ca_and_server_certificate_persist_with_private_keys_0600(tmp_path):
    first = loopback_tls.load_or_create(tmp_path)
    ca_pem, chain = first.ca_path.read_bytes(), first.server_chain_path.read_bytes()
    again = loopback_tls.load_or_create(tmp_path)
    assert again.ca_path == tmp_path / "tls" / "ca.pem"
    assert again.ca_path.read_bytes() == ca_pem and again.server_chain_path.read_bytes() == chain
    for private in (first.ca_key_path, first.server_chain_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_server_certificate_verifies_for_loopback_names(tmp_path):
    material = loopback_tls.load_or_create(tmp_path)
    server = loopback_tls.LoopbackServer(lambda *args: (200, {"ok": True}, {}), material.server_context()).start()
    try:
        port = int(server.url.rsplit(":", 1)[1])
        for name in ("127.0.0.1", "localhost"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with material.client_context().wrap_socket(raw, server_hostname=name) as tls_socket:
                    assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")
        other = loopback_tls.load_or_create(tmp_path / "other")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                other.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()
    with pytest.raises(ValueError, match="loopback"):
        loopback_tls.LoopbackServer(lambda *a: (200, None, {}), host="0.0.0.0")


def test_static_token_from_the_setting(monkeypatch):
    monkeypatch.setenv("CCR_ACCESS_TOKEN", "tok-123")
    credential = credentials.get_credential()
    assert credential.get_token("https://vault.azure.net/.default").token == "tok-123"
    assert "tok-123" not in repr(credential)
    with pytest.raises(ValueError):
        credentials.StaticTokenCredential("")


def test_json_server_answers_errors_without_echoing_the_request():
    def broken(method, path, query, headers, body):
        raise RuntimeError(f"leaked {body!r}")

    server = loopback_tls.LoopbackServer(broken).start()
    try:
        port = int(server.url.rsplit(":", 1)[1])

        def exchange(request: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(request)
                answer = b""
                while chunk := raw.recv(65536):    # the requests say Connection: close
                    answer += chunk
                return answer

        failed = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 6\r\n\r\nsecret")
        assert failed.startswith(b"HTTP/1.1 500")
        assert b"RuntimeError" in failed and b"secret" not in failed
        refused = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: nope\r\n\r\n")
        assert refused.split(b"\r\n", 1)[0].endswith(b"400 Bad Request") and b"Content-Length" in refused
    finally:
        server.stop()
