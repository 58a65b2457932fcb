"""Twin of the DEPA contract ledger: registers COSE_Sign contract envelopes under increasing
sequence numbers, hosts the parties' did:web documents, and calls our webhook once an entry
carries the signatures of the contract's TDC and every TDP.

It authenticates writers. A DID document is recorded only with a proof of possession of its
key (`shared.did.check_registration_proof`: a JWS by the document's key for this ledger's URL,
fresh), first come, never replaced. An envelope is recorded only if every signature it carries
is by a party of its contract and verifies against the DID document this ledger recorded for
that party (`shared.contract.verify_signatures`; no URL is fetched). A contract's identity is
(contract_id, digest): another envelope under the same contract_id with other terms is another
contract, which blocks nothing. Completeness and validity window are still our webhook's checks.
HTTPS on loopback (did:web needs https).

HTTP API
  POST /entries                 body: the envelope (application/cose) -> 201 {"seqno", "contract_id",
                                "digest", "complete", "missing"}; 400 malformed, 403 (nothing recorded,
                                no webhook call) unsigned, or a signature by a non-party, or one that
                                does not verify against the recorded DID document
  GET  /entries/{seqno}         -> {"seqno", "envelope" (base64), "contract_id", "digest", "signers",
                                "complete", "delivery"}: only to a party of that entry's contract, with a
                                bearer token from /auth/token (401 without a valid one; 404 for another
                                party's entry, as for a missing one)
  POST /auth/challenge          {"did"} -> {"challenge", "expires_in"}  (shared/party_auth.py: this ledger's
  POST /auth/token              {"did", "challenge", "signature"} -> {"access_token", "token_type", "expires_in"}
                                own secret, audience `ccr-ledger`, the DID documents recorded here)
  POST /dids                    body: {"document": <DID document for did:web:<this host>:<name>>,
                                "proof": <compact JWS>} -> 201 (first come; the same document again is
                                200, another one 409); 401 proof missing/stale/for another audience or
                                document/not by the document's key; 400 unusable document or proof
  GET  /{name}/did.json         -> the DID document
  POST /budgets                 body: a provider's budget declaration (compact JWS, shared/budget_declaration.py)
                                -> 201 {"identity", "digest"} (first declaration for provider + dataset), 200
                                the same one again, 409 another one (a lifetime budget is declared once), 403
                                not signed by the provider's recorded DID key, 400 malformed
  GET  /budgets?provider=DID&dataset=NAME -> {"declaration"} the recorded one (public, like DID documents); 404
  POST /versions, GET /versions?provider=DID&dataset=NAME: a provider's dataset versions, in strictly
                                increasing order, each package digest once (local_emulator/ledger_versions.py)
An envelope is recorded only if every dataset's `budget` is the declaration recorded here for it,
and every dataset of a version above 1 pins the package its provider declared as that version.
Webhook call: POST <webhook_url>, body = envelope (Content-Type application/cose), headers
`x-ledger-seqno`, `x-functions-key`; retried with exponential backoff until a 2xx; a 4xx
other than 408/429 is a rejection and ends the retries.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import ssl
import threading
from pathlib import Path

import requests

from local_emulator.delivery import DONE, GIVE_UP, RETRY, DeliveryQueue, RetryPolicy, is_retryable
from local_emulator.ledger_versions import VersionRecords
from local_emulator.tls import LoopbackServer, write_private
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared.party_auth import LEDGER_AUDIENCE, PartyAuthError, PartyAuthority

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
_ENTRY = re.compile(r"^/entries/(\d{1,12})$")
_DID_DOC = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._\-]{0,63})/did\.json$")


class LedgerTwin:
    """`start()`, `stop()`, `url`, `register()`, `did_for()`; entries, DID documents and pending
    webhook calls persist under `data_dir`."""

    def __init__(self, data_dir: Path, webhook_url: str | None = None, webhook_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0,
                 retry: RetryPolicy = RetryPolicy(), webhook_verify: str | bool = True):
        self.data_dir = Path(data_dir)
        self.webhook_url, self.webhook_key = webhook_url, webhook_key
        self.retry, self.webhook_verify = retry, webhook_verify
        self._server = LoopbackServer(self._route, ssl_context, port, host, name="ledger-twin")
        self._lock = threading.Lock()
        (self.data_dir / "entries").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "dids").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "budgets").mkdir(parents=True, exist_ok=True)
        self.party_auth = PartyAuthority(_party_auth_secret(self.data_dir / "party_auth.secret"), LEDGER_AUDIENCE,
                                         resolve_did=self.recorded_document)
        self.versions = VersionRecords(self.data_dir / "versions", self.recorded_document,
                                       lambda provider, dataset: self.recorded_budget(provider, dataset) is not None)
        self._deliveries = DeliveryQueue(self.data_dir / "deliveries", self._deliver, self._abandon, retry,
                                         name="ledger-webhook")

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> "LedgerTwin":
        self._server.start()
        self._deliveries.start()
        return self

    def stop(self) -> None:
        self._deliveries.stop()
        self._server.stop()

    def did_for(self, name: str) -> str:
        """The did:web this ledger hosts for party `name`."""
        return dids.did_web("127.0.0.1", self.port, name)

    # --- entries -----------------------------------------------------------------------

    def register(self, envelope: bytes) -> dict:
        """Record an envelope whose every signature is a party's, verified against the DID
        documents recorded here (ContractError otherwise: nothing recorded); schedule the
        webhook call when every party has signed."""
        contract = contracts.verify_signatures(envelope, self.recorded_document)
        for provider, dataset in contracts.datasets(contract.payload):
            if dataset["budget"] != self.recorded_budget(provider, dataset["name"]):
                raise contracts.BadSignature(f"dataset {dataset['name']}'s budget declaration is not the one "
                                             f"{provider} declared on this ledger")
            if dataset["version"] > 1 and not self.versions.declares(provider, dataset):
                raise contracts.BadSignature(f"dataset {dataset['name']} version {dataset['version']} is not the "
                                             f"package {provider} declared as that version on this ledger")
        missing = [did for did in contracts.parties(contract.payload) if did not in contract.signers]
        with self._lock:
            seqno = max((int(p.stem) for p in (self.data_dir / "entries").glob("*.cose")), default=0) + 1
            (self.data_dir / "entries" / f"{seqno:012d}.cose").write_bytes(envelope)
            state = {"seqno": seqno, "contract_id": contract.contract_id, "digest": contract.digest,
                     "signers": list(contract.signers), "complete": not missing,
                     "delivery": "pending" if not missing else "awaiting-signatures",
                     "attempts": 0, "last_status": None}
            self._save(state)
        if not missing:
            self._deliveries.add({"seqno": seqno})
        return {"seqno": seqno, "contract_id": contract.contract_id, "digest": contract.digest,
                "complete": not missing, "missing": missing}

    def entries_for(self, contract_id: str, digest: str) -> list[int]:
        """Sequence numbers of the entries of one contract: its id *and* its digest."""
        found = []
        for path in sorted((self.data_dir / "entries").glob("*.json")):
            state = json.loads(path.read_text())
            if state.get("contract_id") == contract_id and state.get("digest") == digest:
                found.append(state["seqno"])
        return found

    def entry(self, seqno: int) -> dict | None:
        path = self.data_dir / "entries" / f"{seqno:012d}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def envelope(self, seqno: int) -> bytes:
        return (self.data_dir / "entries" / f"{seqno:012d}.cose").read_bytes()

    def _save(self, state: dict) -> None:
        write_private(self.data_dir / "entries" / f"{state['seqno']:012d}.json", json.dumps(state).encode())

    # --- webhook delivery --------------------------------------------------------------

    def _deliver(self, job: dict) -> str:
        """One webhook call for a complete entry (DeliveryQueue retries it)."""
        seqno = job["seqno"]
        if not self.webhook_url:
            log.warning("ledger entry %d is complete but no webhook is configured", seqno)
            return self._record(seqno, "pending", None, RETRY)
        headers = {"Content-Type": "application/cose", "x-ledger-seqno": str(seqno)}
        if self.webhook_key:
            headers["x-functions-key"] = self.webhook_key
        try:
            response = requests.post(self.webhook_url, data=self.envelope(seqno), headers=headers,
                                     timeout=self.retry.timeout_seconds, verify=self.webhook_verify)
        except requests.RequestException as problem:
            log.info("ledger entry %d: webhook unreachable (%s)", seqno, type(problem).__name__)
            return self._record(seqno, "pending", None, RETRY)
        status = response.status_code
        if 200 <= status < 300:
            return self._record(seqno, "delivered", status, DONE)
        if not is_retryable(status):
            log.warning("ledger entry %d rejected by the webhook: HTTP %d %s", seqno, status, _reason(response))
            return self._record(seqno, "rejected", status, GIVE_UP)
        return self._record(seqno, "pending", status, RETRY)

    def _record(self, seqno: int, delivery: str, status: int | None, outcome: str) -> str:
        with self._lock:
            state = self.entry(seqno)
            state.update(delivery=delivery, attempts=state["attempts"] + 1, last_status=status)
            self._save(state)
        return outcome

    def _abandon(self, job: dict) -> None:
        with self._lock:
            state = self.entry(job["seqno"])
            if state["delivery"] == "pending":
                state["delivery"] = "failed"
                self._save(state)
                log.warning("ledger entry %d: webhook delivery abandoned after %d attempts",
                            job["seqno"], state["attempts"])

    # --- DID documents -----------------------------------------------------------------

    def publish_did(self, document: dict, proof: str | None) -> bool:
        """Record and host a party's DID document if `proof` shows possession of its key (a JWS
        by that key for this ledger, `shared.did.check_registration_proof`); True if new.
        DidError for another host's DID or an unusable document, ProofRefused for a missing,
        stale, misdirected or forged proof, FileExistsError if the DID holds another document."""
        did = document.get("id") if isinstance(document, dict) else None
        if not isinstance(did, str):
            raise dids.DidError("DID document must be a JSON object with an 'id'")
        name = dids.did_name(did)
        if did != self.did_for(name):
            raise dids.DidError(f"this ledger hosts {self.did_for(name)}, not {did}")
        dids.check_document(document, did)
        dids.check_registration_proof(document, proof, self.url)
        path = self.data_dir / "dids" / f"{name}.json"
        with self._lock:
            if path.exists():
                if json.loads(path.read_text()) != document:
                    raise FileExistsError(f"{did} is already registered with another document (no key rotation)")
                return False
            write_private(self.data_dir / "dids" / f"{name}.proof.jws", proof.encode())
            path.write_text(json.dumps(document))
            return True

    def recorded_document(self, did: str) -> dict:
        """The DID document recorded here for `did` (DidError if this ledger holds none)."""
        try:
            name = dids.did_name(did)
        except dids.DidError:
            name = None
        path = self.data_dir / "dids" / f"{name}.json"
        if name is None or did != self.did_for(name) or not path.exists():
            raise dids.DidError(f"{did} is not registered on this ledger")
        return dids.check_document(json.loads(path.read_text()), did)

    # --- budget declarations -----------------------------------------------------------

    def _budget_path(self, provider: str, dataset: str) -> Path:
        identity = budget_declaration.identity({"provider": provider, "dataset": dataset})
        return self.data_dir / "budgets" / f"{hashlib.sha256(identity.encode()).hexdigest()}.jws"

    def declare_budget(self, token: str) -> tuple[bool, dict]:
        """Record a provider's budget declaration, first come: (True if new, its claims).
        DeclarationError if malformed or not by the provider's recorded key, FileExistsError
        if another declaration holds that provider + dataset."""
        try:
            claims = budget_declaration.verify(token, self.recorded_document)
        except dids.DidError as problem:
            raise budget_declaration.DeclarationError(str(problem)) from None
        path = self._budget_path(claims["provider"], claims["dataset"])
        with self._lock:
            if path.exists():
                recorded = path.read_text()
                if budget_declaration.digest(recorded) != budget_declaration.digest(token):
                    held = budget_declaration.claims(recorded)
                    raise FileExistsError(f"{budget_declaration.identity(claims)} already has a declared lifetime "
                                          f"budget (epsilon {held['epsilon']}, delta {held['delta']}); "
                                          "a budget is declared once")
                return False, claims
            write_private(path, token.encode())
            return True, claims

    def recorded_budget(self, provider: str, dataset: str) -> str | None:
        path = self._budget_path(provider, dataset)
        return path.read_text() if path.exists() else None

    def _declare_budget(self, body: bytes):
        token = body.decode("ascii", "replace").strip()
        try:
            budget_declaration.claims(token)
        except budget_declaration.DeclarationError as problem:
            return 400, {"error": str(problem)}, {}
        try:
            new, claims = self.declare_budget(token)
        except budget_declaration.DeclarationError as problem:
            log.warning("ledger refused a budget declaration: %s", problem)
            return 403, {"error": str(problem)}, {}
        except FileExistsError as problem:
            return 409, {"error": str(problem)}, {}
        return (201 if new else 200), {"identity": budget_declaration.identity(claims),
                                       "digest": budget_declaration.digest(token)}, {}

    def _read_budget(self, query: dict):
        provider, dataset = query.get("provider"), query.get("dataset")
        token = self.recorded_budget(provider, dataset) if provider and dataset else None
        if token is None:
            return 404, {"error": "no budget declared for that provider and dataset"}, {}
        return 200, {"declaration": token}, {}

    # --- HTTP ----------------------------------------------------------------------------

    def _register_did(self, body: bytes):
        try:
            document, proof = _registration(body)
            new = self.publish_did(document, proof)
        except dids.ProofRefused as problem:
            log.warning("ledger refused a DID registration: %s", problem)
            return 401, {"error": str(problem)}, {}
        except ValueError as problem:   # DidError and JSONDecodeError
            return 400, {"error": str(problem)}, {}
        except FileExistsError as problem:
            return 409, {"error": str(problem)}, {}
        return (201 if new else 200), {"id": document["id"]}, {}

    def _read_entry(self, seqno: int, headers):
        """An entry, only for a party of its contract (its bearer token names the DID); another
        party's entry answers exactly like a missing one."""
        try:
            did = self.party_auth.bearer(headers.get("Authorization"))
        except PartyAuthError as problem:
            return problem.http_status, {"error": str(problem)}, {"WWW-Authenticate": 'Bearer realm="ledger"'}
        state = self.entry(seqno)
        if state is None or did not in contracts.parties(contracts.envelope_signers(self.envelope(seqno))[0]):
            return 404, {"error": "no such entry"}, {}
        return 200, {**state, "envelope": base64.b64encode(self.envelope(seqno)).decode()}, {}

    def _authenticate(self, path: str, body: bytes):
        """POST /auth/challenge and /auth/token: a party proves its DID (shared/party_auth.py)."""
        try:
            request = json.loads(body or b"null")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return 400, {"error": "request body must be a JSON object"}, {}
        try:
            if path == "/auth/challenge":
                return 200, {"challenge": self.party_auth.issue_challenge(request.get("did")),
                             "expires_in": self.party_auth.challenge_seconds}, {}
            token = self.party_auth.exchange(request.get("did"), request.get("challenge"), request.get("signature"))
        except PartyAuthError as problem:
            return problem.http_status, {"error": str(problem)}, {}
        return 200, {"access_token": token.access_token, "token_type": "Bearer", "expires_in": token.expires_in}, \
            {"Cache-Control": "no-store"}

    def _route(self, method: str, path: str, query: dict, headers, body: bytes):
        if len(body) > MAX_BODY:
            return 413, {"error": "request too large"}, {}
        if method == "POST" and path == "/entries":
            try:
                return 201, self.register(body), {}
            except contracts.MalformedContract as problem:
                return 400, {"error": str(problem)}, {}
            except contracts.ContractError as problem:   # unsigned, not a party's, not verified
                log.warning("ledger refused an envelope: %s", problem)
                return 403, {"error": f"refused: {problem}"}, {}
        match = _ENTRY.match(path)
        if method == "GET" and match:
            return self._read_entry(int(match.group(1)), headers)
        if method == "POST" and path in ("/auth/challenge", "/auth/token"):
            return self._authenticate(path, body)
        if method == "POST" and path == "/dids":
            return self._register_did(body)
        if method == "POST" and path == "/budgets":
            return self._declare_budget(body)
        if method == "GET" and path == "/budgets":
            return self._read_budget(query)
        if method == "POST" and path == "/versions":
            return self.versions.post(body)
        if method == "GET" and path == "/versions":
            return self.versions.get(query)
        match = _DID_DOC.match(path)
        if method == "GET" and match:
            path = self.data_dir / "dids" / f"{match.group(1)}.json"
            if not path.exists():
                return 404, {"error": "no such DID"}, {}
            return 200, json.loads(path.read_text()), {}
        return 404, {"error": "not found"}, {}


def _registration(body: bytes) -> tuple[dict, str | None]:
    """{"document", "proof"} from a POST /dids body (ValueError if it is not that shape)."""
    request = json.loads(body)
    if not isinstance(request, dict):
        raise dids.DidError('expected {"document": <DID document>, "proof": <compact JWS>}')
    if "document" not in request and "id" in request:
        raise dids.ProofRefused('a bare DID document is not enough: send {"document", "proof"}, the proof a JWS '
                                "by the document's key (shared.did.registration_proof)")
    if not isinstance(request.get("document"), dict):
        raise dids.DidError('expected {"document": <DID document>, "proof": <compact JWS>}')
    return request["document"], request.get("proof")


def _party_auth_secret(path: Path) -> bytes:
    """The ledger's own party-authentication secret (0600 under its data dir, kept across restarts)."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(48).encode())
    return path.read_bytes().strip()


def _reason(response: requests.Response) -> str:
    """The webhook's stated reason (our webhook returns {"error": ...}), shortened."""
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
