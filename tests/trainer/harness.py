"""What the trainer tests stage: local services on 127.0.0.1 (ephemeral ports, stopped by the
fixture that started them) - Azurite (real, from npm), an Event Grid topic that records what
the real publisher client sends, a key-release endpoint speaking the SKR sidecar's HTTP API
(fast stand-in; tests/trainer/test_twins_e2e.py uses the real sidecar twin) - and the
parties' side: encrypted inputs uploaded and the contract payload that pins them."""
from __future__ import annotations

import base64
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
from azure.storage.blob import BlobServiceClient

from shared import package, storage_names
from shared.blob_sas import trainer_blob_urls
from shared.contract_store import contract_inputs
from shared.settings import PROJECT_ROOT
from local_emulator import covid_reference as covid_model
from trainer_container.model_package import CONTENT_TYPE as MODEL_CONTENT_TYPE

EVENT_KEY = "topic-key-for-tests"
AZURITE_ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
                       "K1SZFPTOtr/KBHBeksoGMGw==")


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


class Stage:
    """Encrypts and uploads the COVID inputs and builds the contract, the way the parties do."""

    def __init__(self, tmp_path, azurite, contract_id, new_key=None):
        """`new_key(name) -> (kid, key bytes)`; by default random keys with made-up key ids,
        served by a KeyReleaseStandIn over `self.keys`."""
        self.tmp, self.contract_id, self.keys = tmp_path, contract_id, {}
        self.new_key = new_key or self._random_key
        self.run_id = f"run-{secrets.token_hex(8)}"
        self.blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS):
            if not self.blobs.get_container_client(container).exists():
                self.blobs.create_container(container)

    def _random_key(self, name):
        return f"https://vault.test:8443/keys/{self.contract_id}-{name}/{uuid.uuid4().hex}", secrets.token_bytes(32)

    def _upload(self, name, plain: bytes, container, blob, content_type):
        kid, self.keys[kid] = self.new_key(name)
        (self.tmp / f"{name}.in").write_bytes(plain)
        manifest = package.encrypt_file(self.tmp / f"{name}.in", self.tmp / f"{name}.ccr", self.keys[kid], kid,
                                        content_type, None)
        with open(self.tmp / f"{name}.ccr", "rb") as src:
            self.blobs.get_blob_client(container, blob).upload_blob(src, overwrite=True)
        return {"blob": f"{container}/{blob}", "sha256": manifest.sha256, "key_kid": kid}

    def contract(self, tables: dict[str, pd.DataFrame | Path], training: dict, join: dict, threshold=1.5) -> dict:
        tdps = []
        for name, table in tables.items():
            csv = table.read_bytes() if isinstance(table, Path) else table.to_csv(index=False).encode()
            ref = self._upload(name, csv, storage_names.DATASETS,
                               storage_names.dataset_blob(self.contract_id, name), "text/csv")
            tdps.append({"did": f"did:web:{name}", "datasets": [{"name": name, "epsilon_threshold": threshold, **ref}]})
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("model.onnx", covid_model.covid_onnx())
            z.writestr("training.json", json.dumps(training))
        model = self._upload("model", archive.getvalue(), storage_names.MODELS,
                             storage_names.model_blob(self.contract_id), MODEL_CONTENT_TYPE)
        output_kid, self.keys[output_kid] = self.new_key("output")
        return {"contract_id": self.contract_id, "tdc": {"did": "did:web:tdc", "model": model,
                                                         "output": {"key_kid": output_kid}},
                "tdps": tdps, "privacy": {"delta": 1e-5}, "pipeline": {"join": join}}


def blob_urls(stage, contract) -> dict[str, str]:
    """The run's per-blob SAS URLs, signed as the control plane signs them."""
    return trainer_blob_urls(stage.blobs, [item["blob"] for item in contract_inputs(contract)],
                             storage_names.output_path(stage.run_id),
                             datetime.now(timezone.utc) + timedelta(hours=1))


def environment(stage, sidecar, topic, contract, maa_url="https://maa.test") -> dict:
    """The trainer's environment variables, as the container group sets them."""
    return {"CCR_RUN_ID": stage.run_id, "CCR_CONTRACT": json.dumps(contract),
            "CCR_BLOB_URLS": json.dumps(blob_urls(stage, contract)), "CCR_SKR_URL": sidecar.url,
            "CCR_MAA_URL": maa_url, "CCR_EVENTGRID_TOPIC_URL": f"{topic.url}/api/events",
            "CCR_EVENTGRID_KEY": EVENT_KEY}


def run_trainer_process(trainer_env: dict) -> subprocess.CompletedProcess:
    """`python -m trainer_container` as the container runs it, with `trainer_env` added."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "trainer_container"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **trainer_env}, timeout=300, cwd=PROJECT_ROOT)
