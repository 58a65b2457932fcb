"""What the trainer tests stage: local services on 127.0.0.1 (ephemeral ports, stopped by the
fixture that started them) - Azurite (real, from npm), an Event Grid topic that records what
the real publisher client sends, the parties' DID documents over HTTPS (did:web, loopback CA),
a key-release endpoint speaking the SKR sidecar's HTTP API (fast stand-in serving the grants'
key-encryption keys; tests/trainer/test_twins_e2e.py uses the real sidecar twin) - and the
parties' side: encrypted inputs uploaded, a schema-2 contract every party signs (COSE_Sign,
real P-256 identities), and each party's per-contract key grants (KEK-DEK, shared/key_grants.py)."""
from __future__ import annotations

import base64
import io
import json
import os
import secrets
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import cbor2
import pandas as pd
from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk

from local_emulator import covid_reference as covid_model
from local_emulator.tls import LoopbackServer, LoopbackTls
from orchestrations.deployment import trainer_reads
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared import key_grants, package, storage_names
from shared.blob_sas import trainer_blob_urls
from shared.container_group import policy_template_sha256
from shared.settings import PROJECT_ROOT
from trainer_container.model_package import CONTENT_TYPE as MODEL_CONTENT_TYPE

EVENT_KEY = "topic-key-for-tests"
AZURITE_ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
                       "K1SZFPTOtr/KBHBeksoGMGw==")
TRAINER_IMAGE = f"ccr-trainer@sha256:{'a' * 64}"  # fixed: the trainer tests run the code in this checkout
TDC = "tdc"                                        # the consumer's party name; providers are named after datasets
VALIDATION_SPLIT = 0.2
MIN_JOINED_ROWS = 100


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
    """Accepts Event Grid schema batches carrying the right `aeg-sas-key`; keeps raw bodies too.
    `events`: every event but the trainer's per-epoch progress, which goes to `progress`."""

    def __init__(self, key: str):
        self.key, self.events, self.progress, self.raw = key, [], [], []

    def handler(self):
        topic = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("aeg-sas-key") != topic.key:
                    self.send_response(401)
                else:
                    topic.raw.append(body)
                    for event in json.loads(body):  # per-epoch progress apart: tests count outcomes
                        (topic.progress if event.get("eventType") == "CCR.Trainer.Progress" else topic.events).append(event)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        return Handler


class KeyReleaseStandIn(_Server):
    """`POST /key/release {maa_endpoint, akv_endpoint, kid}` -> `{"key": "<private RSA JWK json>"}`
    for the key-encryption keys it holds, by KEK name (`kid`); 403 for an unknown name, a missing
    attestation endpoint, or (when `vaults` names the KEK's vault host) a request to another
    vault. Records every release request body. `POST /attest/maa` answers an unsigned stand-in
    token (the outcome the trainer signs is read back with `outcome`; the twins' MAA signs real
    ones)."""

    def __init__(self, keys: dict[str, rsa.RSAPrivateKey], vaults: dict[str, str] | None = None):
        self.keys, self.vaults, self.requests, self.attestations = keys, vaults or {}, [], []

    def handler(self):
        sidecar = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path == "/attest/maa":  # an unsigned stand-in token: only the twins' MAA signs
                    sidecar.attestations.append(body)
                    payload = json.dumps({"token": "stand-in-token"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                sidecar.requests.append(body)
                name = body.get("kid")
                key = sidecar.keys.get(name)
                vault = sidecar.vaults.get(name)
                if self.path != "/key/release" or key is None or not body.get("maa_endpoint") \
                        or (vault is not None and body.get("akv_endpoint") != vault):
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                released = json.loads(jwk.JWK.from_pyca(key).export_private())
                payload = json.dumps({"key": json.dumps({**released, "kid": name})}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass
        return Handler


class RequestRecorder(_Server):
    """Answers 404 to everything and records `(method, path)`: blob URLs pointed here prove
    that nothing was downloaded."""

    def __init__(self):
        self.requests = []

    def handler(self):
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                recorder.requests.append((self.command, self.path))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _record

            def log_message(self, *args):
                pass
        return Handler


class DidHost:
    """The parties' DID documents over HTTPS on 127.0.0.1 (loopback CA): the identity of party
    `name` is `did:web:127.0.0.1%3A<port>:<name>`, whose document the did:web method resolves
    at `https://127.0.0.1:<port>/<name>/did.json`."""

    def __init__(self, tls: LoopbackTls):
        self.tls, self.documents, self.requests = tls, {}, []
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._route, tls.server_context(), name="did-host")

    def start(self) -> "DidHost":
        self.server.start()
        self.port = urlsplit(self.server.url).port
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def ca_bundle(self) -> str:
        return str(self.tls.ca_path)

    def identity(self, name: str) -> dids.Identity:
        """A new P-256 identity for party `name` (unique on this host), its document published."""
        identity = dids.Identity.generate(dids.did_web("127.0.0.1", self.port, name))
        with self._lock:
            if f"/{name}/did.json" in self.documents:
                raise ValueError(f"party {name} is already hosted")
            self.documents[f"/{name}/did.json"] = identity.document()
        return identity

    def _route(self, method, path, query, headers, body, *peer):
        with self._lock:
            self.requests.append(path)
            document = self.documents.get(path) if method == "GET" else None
        return (200, document, {}) if document is not None else (404, None, {})


@dataclass(frozen=True)
class SignedContract:
    """What the control plane hands a run: the payload, its signed envelope and its digest."""
    payload: dict
    envelope: bytes = field(repr=False)
    digest: str

    @property
    def envelope_b64(self) -> str:
        return base64.b64encode(self.envelope).decode("ascii")


def replace_payload(envelope: bytes, payload: dict) -> bytes:
    """The envelope with its signed payload swapped for `payload` (signatures kept as they are):
    a contract altered after signing."""
    tagged = cbor2.loads(envelope)
    body = list(tagged.value)
    body[2] = contracts.canonical_json(payload)
    return cbor2.dumps(cbor2.CBORTag(tagged.tag, body))


def digest_of(payload: dict) -> str:
    return contracts.payload_digest(contracts.canonical_json(payload))


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Stage:
    """Encrypts and uploads the COVID inputs, writes the contract, signs it and grants the data
    keys to it, the way the parties do. One TDC and one TDP per dataset, each with its own
    identity (published on `dids`) and Key Vault.

    `new_kek(grant, kek_name, signed) -> RSA public key` creates a grant's KEK; by default a
    local RSA 2048 key kept in `self.keks` (served by a KeyReleaseStandIn(stage.keks,
    stage.kek_vaults)). `vault_url(party)` is a party's Key Vault URL (default: its own
    made-up host)."""

    def __init__(self, tmp_path, azurite, contract_id, *, dids: DidHost,
                 new_kek: Callable[[key_grants.GrantSubject, str, SignedContract], rsa.RSAPublicKey] | None = None,
                 vault_url: Callable[[str], str] | None = None):
        self.tmp, self.contract_id, self.dids = tmp_path, contract_id, dids
        self.new_kek = new_kek or self._local_kek
        self.vault_url = vault_url or (lambda party: f"https://{party}.vault.test")
        self.deks: dict[str, bytes] = {}            # data key id -> data key (each owner keeps its own)
        self.keks: dict[str, rsa.RSAPrivateKey] = {}  # KEK name -> KEK (the owners' vaults)
        self.kek_vaults: dict[str, str] = {}          # KEK name -> its vault's host (akv_endpoint)
        self.identities: dict[str, dids.Identity] = {}
        self.run_id = f"run-{secrets.token_hex(8)}"
        self.nonce = secrets.token_hex(16)  # drawn at deployment by the control plane
        self._tag = secrets.token_hex(4)
        self.blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS):
            if not self.blobs.get_container_client(container).exists():
                self.blobs.create_container(container)

    # ---- the parties' packages

    def _identity(self, party: str) -> dids.Identity:
        if party not in self.identities:
            self.identities[party] = self.dids.identity(f"{self.contract_id}-{party}-{self._tag}")
        return self.identities[party]

    def _upload(self, name, plain: bytes, container, content_type) -> dict:
        key_id = f"{self.contract_id}-{name}-{secrets.token_hex(4)}"
        self.deks[key_id] = secrets.token_bytes(key_grants.DEK_BYTES)
        (self.tmp / f"{name}.in").write_bytes(plain)
        manifest = package.encrypt_file(self.tmp / f"{name}.in", self.tmp / f"{name}.ccr", self.deks[key_id], key_id,
                                        content_type, None)
        blob = storage_names.model_blob("tdc", key_id) if container == storage_names.MODELS else \
            storage_names.dataset_blob(name, name, key_id)  # providers here are named as their datasets
        with open(self.tmp / f"{name}.ccr", "rb") as src:
            self.blobs.get_blob_client(container, blob).upload_blob(src, overwrite=True)
        return {"blob": f"{container}/{blob}", **manifest.pin(), "key_id": key_id}

    def contract(self, tables: dict[str, pd.DataFrame | Path], training: dict, join: dict, threshold=1.5,
                 epsilon: float | dict[str, float] | None = None, min_joined_rows: int = MIN_JOINED_ROWS,
                 delta: float = 1e-5) -> dict:
        """The schema-2 payload over freshly encrypted packages. `epsilon` is what the contract
        asks of each dataset (one value, or per dataset name), by default its `threshold` (the
        lifetime epsilon its provider declares)."""
        asked = lambda name: (epsilon.get(name, threshold) if isinstance(epsilon, dict)
                              else threshold if epsilon is None else epsilon)
        tdc = self._identity(TDC)  # the TDC first: it signs first
        tdps = []
        for name, table in tables.items():
            csv = table.read_bytes() if isinstance(table, Path) else table.to_csv(index=False).encode()
            ref = self._upload(name, csv, storage_names.DATASETS, "text/csv")
            tdps.append({"did": self._identity(name).did, "key_vault": self.vault_url(name),
                         "datasets": [{"name": name, "version": 1, **ref, "epsilon": asked(name),
                                       "budget": budget_declaration.declare(self._identity(name), name,
                                                                            threshold, delta)}]})
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("model.onnx", covid_model.covid_onnx())
            z.writestr("training.json", json.dumps(training))
        model = self._upload("model", archive.getvalue(), storage_names.MODELS, MODEL_CONTENT_TYPE)
        output_key_id = f"{self.contract_id}-output-{secrets.token_hex(4)}"
        self.deks[output_key_id] = secrets.token_bytes(key_grants.DEK_BYTES)
        now = datetime.now(timezone.utc)
        return {"schema_version": contracts.SCHEMA_VERSION, "contract_id": self.contract_id,
                "purpose": "covid outcome model (trainer tests)",
                "valid_from": _time(now - timedelta(hours=1)), "valid_until": _time(now + timedelta(days=1)),
                "tdc": {"did": tdc.did, "key_vault": self.vault_url(TDC), "model": model,
                        "output": {"key_id": output_key_id}},
                "tdps": tdps, "privacy": {"delta": delta},
                "evaluation": {"validation_split": VALIDATION_SPLIT, "min_joined_rows": min_joined_rows},
                "workloads": {"training": {"image": TRAINER_IMAGE,
                                           "policy_template_sha256": policy_template_sha256(TRAINER_IMAGE),
                                           "join": join, "deadline_seconds": 3600}}}

    # ---- consent: signatures and grants

    def ask(self, payload: dict, epsilon: float) -> None:
        """Every dataset asks `epsilon`, its provider declaring that much as its lifetime budget."""
        for _, dataset in contracts.datasets(payload):
            dataset["epsilon"] = epsilon
            dataset["budget"] = budget_declaration.declare(self._identity(dataset["name"]), dataset["name"], epsilon,
                                                           payload["privacy"]["delta"])

    def sign(self, payload: dict, parties: list[str] | None = None, grant: bool = True) -> SignedContract:
        """Every party of `parties` (default: all; names as in `self.identities`) signs the
        payload and, if `grant`, grants its data keys to this contract."""
        parties = list(self.identities) if parties is None else parties
        envelope = contracts.sign_contract(payload, [self.identities[p] for p in parties])
        signed = SignedContract(payload, envelope, digest_of(payload))
        if grant:
            signers = {self.identities[p].did for p in parties}
            for subject in key_grants.subjects(payload):
                if subject.grantor in signers:
                    self.grant(signed, subject)
        return signed

    def grant(self, signed: SignedContract, subject: key_grants.GrantSubject,
              dek: bytes | None = None, key_id: str | None = None) -> str:
        """The owner's grant of `subject`'s data key to `signed` (a new KEK, the DEK wrapped under
        it, uploaded to its grant path). `dek`/`key_id` override what is wrapped and what the JWE
        header names (a wrong grant)."""
        kek = key_grants.kek_name(signed.digest, subject.subject)
        public = self.new_kek(subject, kek, signed)
        wrapped = key_grants.wrap(self.deks[subject.key_id] if dek is None else dek, public, kek,
                                  subject.key_id if key_id is None else key_id)
        self.blobs.get_blob_client(storage_names.GRANTS, key_grants.grant_blob(signed.digest, subject.subject)) \
            .upload_blob(wrapped.encode("ascii"), overwrite=True)
        return key_grants.grant_path(signed.digest, subject.subject)

    def _local_kek(self, subject: key_grants.GrantSubject, kek: str, signed: SignedContract) -> rsa.RSAPublicKey:
        private = self.keks.get(kek) or rsa.generate_private_key(public_exponent=65537, key_size=key_grants.KEK_BITS)
        self.keks[kek] = private
        self.kek_vaults[kek] = urlsplit(subject.key_vault).netloc
        return private.public_key()

    # ---- lookups for assertions

    def subject(self, signed: SignedContract, label: str) -> key_grants.GrantSubject:
        """The grant subject with this label ("model", "output key", "dataset <name>")."""
        [found] = [s for s in key_grants.subjects(signed.payload) if s.label == label]
        return found

    def kek(self, signed: SignedContract, label: str) -> str:
        """The KEK name of the grant labelled `label` under `signed`."""
        return key_grants.kek_name(signed.digest, self.subject(signed, label).subject)

    def output_key(self, signed: SignedContract) -> bytes:
        return self.deks[signed.payload["tdc"]["output"]["key_id"]]


def blob_urls(stage, signed: SignedContract) -> dict[str, str]:
    """The run's per-blob SAS URLs (packages and grants), signed as the control plane signs them."""
    return trainer_blob_urls(stage.blobs, trainer_reads(signed.payload, signed.digest),
                             storage_names.output_path(stage.run_id),
                             datetime.now(timezone.utc) + timedelta(hours=1))


def environment(stage, sidecar, topic, signed: SignedContract, maa_url="https://maa.test") -> dict:
    """The trainer's environment variables, as the container group sets them (the group's
    policy pins CCR_CONTRACT_DIGEST; CCR_CA_BUNDLE lets the trainer reach the DID host)."""
    return {"CCR_RUN_ID": stage.run_id, "CCR_RUN_NONCE": stage.nonce, "CCR_CONTRACT": signed.envelope_b64,
            "CCR_CONTRACT_DIGEST": signed.digest,
            "CCR_BLOB_URLS": json.dumps(blob_urls(stage, signed)), "CCR_SKR_URL": sidecar.url,
            "CCR_MAA_URL": maa_url, "CCR_EVENTGRID_TOPIC_URL": f"{topic.url}/api/events",
            "CCR_EVENTGRID_KEY": EVENT_KEY, "CCR_CA_BUNDLE": stage.dids.ca_bundle}


def run_trainer_process(trainer_env: dict) -> subprocess.CompletedProcess:
    """`python -m trainer_container` as the container runs it, with `trainer_env` added."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "trainer_container"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **trainer_env}, timeout=300, cwd=PROJECT_ROOT)


def outcome(event: dict) -> dict:
    """The outcome a completion event carries: the signed statement's payload when the trainer
    attested it (read without verifying: tests/keys verifies), else the event's data."""
    data = event["data"]
    if "outcome" not in data:
        return data
    payload = data["outcome"].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
