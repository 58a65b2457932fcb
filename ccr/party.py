"""A party's session with a clean-room service: it proves its DID (a challenge signed with its
did:web key, exchanged for a short-lived bearer token: shared/party_auth.py) and then calls the
service with that token. Against the Functions app (`CCR_FUNCTIONS_URL`) it asks for the run
status and for SAS URLs for its own blobs, so a party never holds the storage account key;
against the ledger it reads the entries of its contracts.

The identity: `--did` and `--key` (the PEM `ccr identity new` wrote), or the settings
CCR_PARTY_DID and CCR_PARTY_KEY (a party's profile in its environment).
"""
from __future__ import annotations

import time
from pathlib import Path

from ccr.common import CliError

DID_SETTING, KEY_SETTING = "CCR_PARTY_DID", "CCR_PARTY_KEY"
DEFAULT_KEY_ID = "key-1"   # shared.did.DEFAULT_KEY_ID, without importing the crypto libraries for --help
_TOKENS: dict[tuple[str, str], tuple[str, float]] = {}   # (service, key ref) -> (token, monotonic expiry)
_MARGIN = 30.0


def add_identity_arguments(parser, did_help: str = "your did:web (default: setting CCR_PARTY_DID)") -> None:
    parser.add_argument("--did", help=did_help)
    parser.add_argument("--key", type=Path, help="your private key (PEM, from `ccr identity new`; default: setting "
                                                 "CCR_PARTY_KEY)")
    parser.add_argument("--key-id", default=DEFAULT_KEY_ID, help="verification method id in your DID document")


def party_did(args, required: bool = False) -> str | None:
    from shared import did as dids
    from shared import settings
    did = getattr(args, "did", None) or settings.get(DID_SETTING)
    if required and not did:
        raise CliError(f"who are you? pass --did or set {DID_SETTING}")
    if did:
        try:
            dids.document_url(did)
        except dids.DidError as error:
            raise CliError(f"--did: {error}") from None
    return did


def identity(args, required: bool = False):
    """The party's signing identity (shared.did.Identity), or None when no key is given (and not
    `required`)."""
    from shared import did as dids
    from shared import settings
    did = party_did(args, required)
    key = getattr(args, "key", None) or settings.get(KEY_SETTING)
    if not key or not did:
        if required:
            raise CliError(f"this needs your identity: pass --did and --key (or set {DID_SETTING} and {KEY_SETTING})")
        return None
    try:
        return dids.Identity(did, dids.load_private_key(Path(key)), getattr(args, "key_id", None) or dids.DEFAULT_KEY_ID)
    except FileNotFoundError:
        raise CliError(f"--key: {key} does not exist") from None
    except dids.DidError as error:
        raise CliError(f"--key: {error}") from None


class PartySession:
    """Calls to one service (`base` = where its `auth/challenge` and `auth/token` live) as one party."""

    def __init__(self, base: str, party, name: str = "the service"):
        self.base, self.party, self.name = base.rstrip("/"), party, name

    def _post(self, path: str, body: dict, headers: dict | None = None):
        import requests

        from shared import settings
        try:
            return requests.post(f"{self.base}/{path}", json=body, headers=headers, timeout=60,
                                 verify=settings.ca_bundle())
        except requests.RequestException as error:
            raise CliError(f"cannot reach {self.name} at {self.base} ({type(error).__name__}){_where(self)}") from None

    def token(self, fresh: bool = False) -> str:
        cached = _TOKENS.get((self.base, self.party.key_ref))
        if cached and not fresh and cached[1] > time.monotonic():
            return cached[0]
        answer = self._post("auth/challenge", {"did": self.party.did})
        challenge = _json(answer, f"{self.name} refused to issue a challenge").get("challenge")
        from shared.party_auth import sign_challenge
        answer = self._post("auth/token", {"did": self.party.did, "challenge": challenge,
                                           "signature": sign_challenge(self.party, challenge)})
        granted = _json(answer, f"{self.name} refused your identity")
        token = granted.get("access_token")
        if not isinstance(token, str):
            raise CliError(f"{self.name} answered no access token")
        _TOKENS[(self.base, self.party.key_ref)] = (token, time.monotonic() + float(granted.get("expires_in", 0))
                                                    - _MARGIN)
        return token

    def request(self, method: str, path: str, **kwargs):
        """`method base/path` with the bearer token (a fresh one once if the cached one is refused)."""
        import requests

        from shared import settings
        extra = kwargs.pop("headers", None) or {}
        for fresh in (False, True):
            headers = {**extra, "Authorization": f"Bearer {self.token(fresh)}"}
            try:
                response = requests.request(method, f"{self.base}/{path}", headers=headers, timeout=60,
                                            verify=settings.ca_bundle(), **kwargs)
            except requests.RequestException as error:
                raise CliError(f"cannot reach {self.name} at {self.base} ({type(error).__name__}){_where(self)}") \
                    from None
            if response.status_code != 401:
                break
        return response

    def sas(self, blob: str, permission: str, contract: dict | None = None) -> str:
        """A SAS URL for one of this party's blobs (a secret: never printed)."""
        body = {"blob": blob, "permission": permission, **({"contract": contract} if contract else {})}
        answer = _json(self.request("POST", "sas", json=body), f"no {permission} access to {blob}")
        return answer["url"]


def _where(session: PartySession) -> str:
    """Why `ccr` called that URL: which setting, from where (shared/settings.py profiles)."""
    from shared import settings
    origin = settings.source("CCR_FUNCTIONS_URL") if session.name == "the clean room" else None
    if origin is None:
        return ""
    return f"; CCR_FUNCTIONS_URL from {origin}: is the clean room running there? (`ccr profile`)"


def functions_url(args=None) -> str | None:
    from shared import settings
    return (getattr(args, "url", None) if args is not None else None) or settings.get("CCR_FUNCTIONS_URL")


def session_for(party) -> PartySession | None:
    """`party`'s session with the Functions app at CCR_FUNCTIONS_URL, if both are known."""
    base = functions_url()
    return PartySession(f"{base.rstrip('/')}/api", party, "the clean room") if party and base else None


def clean_room(args, required: bool = False) -> PartySession | None:
    """The party's session with the Functions app, when it has an identity and the app's URL;
    None otherwise (then storage is reached with the account connection: an operator's setup)."""
    party, base = identity(args, required), functions_url(args)
    if party is None:
        return None
    if not base:
        if required:
            raise CliError("no Functions app: pass --url or set CCR_FUNCTIONS_URL")
        return None
    return PartySession(f"{base.rstrip('/')}/api", party, "the clean room")


def _json(response, refusal: str) -> dict:
    if not response.ok:
        try:
            reason = str(response.json().get("error", ""))[:300]
        except (ValueError, AttributeError):
            reason = response.reason or ""
        raise CliError(f"{refusal} (HTTP {response.status_code}): {reason}")
    try:
        document = response.json()
    except ValueError:
        raise CliError(f"{refusal}: the answer is not JSON") from None
    if not isinstance(document, dict):
        raise CliError(f"{refusal}: unexpected answer")
    return document
