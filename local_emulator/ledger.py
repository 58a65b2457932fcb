"""Twin of the DEPA contract ledger: registers COSE_Sign contract envelopes under increasing
sequence numbers, hosts the parties' did:web documents, and calls our webhook once an entry
carries the signatures of the contract's TDC and every TDP.

Like the real ledger it verifies no signature (our webhook does); it only reads which DIDs
must sign and which DIDs the signatures claim. HTTPS on loopback (did:web needs https).

HTTP API
  POST /entries                 body: the envelope (application/cose) -> 201 {"seqno", "complete", "missing"}
  GET  /entries/{seqno}         -> {"seqno", "envelope" (base64), "contract_id", "complete", "delivery"}
  POST /dids                    body: a DID document for did:web:<this host>:<name> -> 201 (first come;
                                the same document again is 200, a different one 409)
  GET  /{name}/did.json         -> the DID document
Webhook call: POST <webhook_url>, body = envelope (Content-Type application/cose), headers
`x-ledger-seqno`, `x-functions-key`; retried with exponential backoff until a 2xx; a 4xx
other than 408/429 is a rejection and ends the retries.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from local_emulator.tls import LoopbackServer
from shared import contract as contracts
from shared import did as dids

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
_ENTRY = re.compile(r"^/entries/(\d{1,12})$")
_DID_DOC = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._\-]{0,63})/did\.json$")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: initial, doubled per failure up to maximum, at most `attempts` calls."""
    initial_seconds: float = 1.0
    maximum_seconds: float = 60.0
    attempts: int = 12
    timeout_seconds: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.maximum_seconds, self.initial_seconds * 2 ** (failures - 1))


class LedgerTwin:
    def __init__(self, data_dir: Path, webhook_url: str | None = None, webhook_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0,
                 retry: RetryPolicy = RetryPolicy(), webhook_verify: str | bool = True):
        self.data_dir = Path(data_dir)
        self.webhook_url, self.webhook_key = webhook_url, webhook_key
        self.retry, self.webhook_verify = retry, webhook_verify
        self._server = LoopbackServer(self._route, ssl_context, port, host, name="ledger-twin")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due: dict[int, float] = {}   # seqno -> monotonic time of its next delivery attempt
        self._running = False
        self._scheduler: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        (self.data_dir / "entries").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "dids").mkdir(parents=True, exist_ok=True)

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> "LedgerTwin":
        self._server.start()
        self._running = True
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ledger-webhook")
        with self._lock:
            for state in self._states():
                if state["delivery"] == "pending":
                    self._due[state["seqno"]] = time.monotonic()
        self._scheduler = threading.Thread(target=self._schedule, name="ledger-scheduler", daemon=True)
        self._scheduler.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._running = False
            self._wake.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()
            self._scheduler = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._server.stop()

    def did_for(self, name: str) -> str:
        """The did:web this ledger hosts for party `name`."""
        return dids.did_web("127.0.0.1", self.port, name)

    # --- entries -----------------------------------------------------------------------

    def register(self, envelope: bytes) -> dict:
        """Record an envelope; schedule the webhook call when every party has signed."""
        payload, claimed = contracts.envelope_signers(envelope)
        missing = [did for did in contracts.parties(payload) if did not in claimed]
        with self._lock:
            seqno = max((s["seqno"] for s in self._states()), default=0) + 1
            (self.data_dir / "entries" / f"{seqno:012d}.cose").write_bytes(envelope)
            state = {"seqno": seqno, "contract_id": payload["contract_id"], "complete": not missing,
                     "delivery": "pending" if not missing else "awaiting-signatures",
                     "attempts": 0, "last_status": None}
            self._save(state)
            if not missing:
                self._due[seqno] = time.monotonic()
                self._wake.notify_all()
        return {"seqno": seqno, "complete": not missing, "missing": missing}

    def entry(self, seqno: int) -> dict | None:
        path = self.data_dir / "entries" / f"{seqno:012d}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def envelope(self, seqno: int) -> bytes:
        return (self.data_dir / "entries" / f"{seqno:012d}.cose").read_bytes()

    def _states(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.data_dir / "entries").glob("*.json"))]

    def _save(self, state: dict) -> None:
        path = self.data_dir / "entries" / f"{state['seqno']:012d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    # --- webhook delivery --------------------------------------------------------------

    def _schedule(self) -> None:
        with self._wake:
            while self._running:
                now = time.monotonic()
                ready = [seqno for seqno, due in self._due.items() if due <= now]
                for seqno in ready:
                    del self._due[seqno]
                    self._pool.submit(self._deliver, seqno)
                wait = min(self._due.values(), default=now + 3600) - now
                self._wake.wait(timeout=max(0.0, min(wait, 3600)))

    def _deliver(self, seqno: int) -> None:
        if not self.webhook_url:
            log.warning("ledger entry %d is complete but no webhook is configured", seqno)
            return self._retry_later(seqno, None)
        headers = {"Content-Type": "application/cose", "x-ledger-seqno": str(seqno)}
        if self.webhook_key:
            headers["x-functions-key"] = self.webhook_key
        try:
            response = requests.post(self.webhook_url, data=self.envelope(seqno), headers=headers,
                                     timeout=self.retry.timeout_seconds, verify=self.webhook_verify)
            status = response.status_code
        except requests.RequestException as problem:
            log.info("ledger entry %d: webhook unreachable (%s)", seqno, type(problem).__name__)
            return self._retry_later(seqno, None)
        if 200 <= status < 300:
            return self._finish(seqno, "delivered", status)
        if 400 <= status < 500 and status not in (408, 429):
            log.warning("ledger entry %d rejected by the webhook: HTTP %d %s", seqno, status,
                        _reason(response))
            return self._finish(seqno, "rejected", status)
        self._retry_later(seqno, status)

    def _finish(self, seqno: int, outcome: str, status: int) -> None:
        with self._lock:
            state = self.entry(seqno)
            state.update(delivery=outcome, attempts=state["attempts"] + 1, last_status=status)
            self._save(state)

    def _retry_later(self, seqno: int, status: int | None) -> None:
        with self._wake:
            state = self.entry(seqno)
            state.update(attempts=state["attempts"] + 1, last_status=status)
            if state["attempts"] >= self.retry.attempts:
                state["delivery"] = "failed"
                log.warning("ledger entry %d: webhook delivery abandoned after %d attempts", seqno,
                            state["attempts"])
            elif self._running:
                self._due[seqno] = time.monotonic() + self.retry.delay(state["attempts"])
                self._wake.notify_all()
            self._save(state)

    # --- DID documents -----------------------------------------------------------------

    def publish_did(self, document: dict) -> bool:
        """Host a party's DID document; True if new. Refuses another party's or a changed one."""
        did = document.get("id") if isinstance(document, dict) else None
        if not isinstance(did, str):
            raise dids.DidError("DID document must be a JSON object with an 'id'")
        name = dids.did_name(did)
        if did != self.did_for(name):
            raise dids.DidError(f"this ledger hosts {self.did_for(name)}, not {did}")
        dids.check_document(document, did)
        path = self.data_dir / "dids" / f"{name}.json"
        with self._lock:
            if path.exists():
                if json.loads(path.read_text()) != document:
                    raise FileExistsError(f"{did} is already registered with another document")
                return False
            path.write_text(json.dumps(document))
            return True

    # --- HTTP ----------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        if len(body) > MAX_BODY:
            return 413, {"error": "request too large"}, {}
        if method == "POST" and path == "/entries":
            try:
                return 201, self.register(body), {}
            except contracts.ContractError as problem:
                return 400, {"error": str(problem)}, {}
        match = _ENTRY.match(path)
        if method == "GET" and match:
            state = self.entry(int(match.group(1)))
            if state is None:
                return 404, {"error": "no such entry"}, {}
            return 200, {**state, "envelope": base64.b64encode(self.envelope(state["seqno"])).decode()}, {}
        if method == "POST" and path == "/dids":
            try:
                new = self.publish_did(json.loads(body))
            except ValueError as problem:   # DidError and JSONDecodeError
                return 400, {"error": str(problem)}, {}
            except FileExistsError as problem:
                return 409, {"error": str(problem)}, {}
            return (201 if new else 200), {"id": json.loads(body)["id"]}, {}
        match = _DID_DOC.match(path)
        if method == "GET" and match:
            path = self.data_dir / "dids" / f"{match.group(1)}.json"
            if not path.exists():
                return 404, {"error": "no such DID"}, {}
            return 200, json.loads(path.read_text()), {}
        return 404, {"error": "not found"}, {}


def _reason(response: requests.Response) -> str:
    """The webhook's stated reason (our webhook returns {"error": ...}), shortened."""
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
