"""Local services the trainer talks to in tests, each on 127.0.0.1 with an ephemeral port and
stopped by the fixture that started it: Azurite (real, from npm), an Event Grid topic that
records what the real publisher client sends, and a key-release endpoint speaking the SKR
sidecar's HTTP API (a stand-in until the sidecar twin is wired in by the lead)."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.settings import PROJECT_ROOT

AZURITE_ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
                       "K1SZFPTOtr/KBHBeksoGMGw==")


class Azurite:
    def __init__(self, location: Path):
        self.location = location

    def start(self) -> "Azurite":
        self.process = subprocess.Popen(
            [str(PROJECT_ROOT / "node_modules/.bin/azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", "0",
             "--location", str(self.location), "--skipApiVersionCheck"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:
            found = re.search(r"listens on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError("azurite did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        return self

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};"
                f"BlobEndpoint={self.url}/devstoreaccount1;")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:  # it waits for idle keep-alive clients to hang up
            self.process.kill()
            self.process.wait(timeout=10)


class _Server:
    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EventGridTopic(_Server):
    """Accepts Event Grid schema batches carrying the right `aeg-sas-key`; keeps raw bodies too."""

    def __init__(self, key: str):
        self.key, self.events, self.raw = key, [], []

    def handler(self):
        topic = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("aeg-sas-key") != topic.key:
                    self.send_response(401)
                else:
                    topic.raw.append(body)
                    topic.events.extend(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        return Handler


class KeyReleaseStandIn(_Server):
    """`POST /key/release {maa_endpoint, akv_endpoint, kid}` -> `{"key": "<oct JWK json>"}` for
    known key ids; records which key ids were asked for."""

    def __init__(self, keys: dict[str, bytes]):
        self.keys, self.requests = keys, []

    def handler(self):
        sidecar = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                sidecar.requests.append(body)
                key = sidecar.keys.get(body.get("kid"))
                if self.path != "/key/release" or key is None or not body.get("maa_endpoint"):
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(key).rstrip(b"=").decode(), "kid": body["kid"]}
                payload = json.dumps({"key": json.dumps(jwk)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass
        return Handler
