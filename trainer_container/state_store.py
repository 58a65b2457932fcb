"""Keeping a run's model state inside the clean room, and getting it back in a continued run.

Claim (shared/model_states.py has the whole argument): the state leaves the trainer only as a
package under a fresh data key, that key wrapped under the contract's state KEK, which Key Vault
releases only to this contract's attested trainer group. The trainer asks for the KEK before it
reads any data, so a contract whose state key is missing or refuses it fails untouched.

Attacks stopped: anyone but the clean room reading the state (no one else can release the KEK);
a swapped or altered state package (the package authenticates its content under a data key only
the wrap under this contract's KEK yields; a state package of another contract or run names
another key id and is refused before decryption)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from jwcrypto import jwk

from shared import key_grants, model_states, package
from trainer_container import model_state


class StateStore:
    """The contract's model states, reached through the run's SAS URLs (`blob_io`: read or create
    one blob by path) and the released state KEK (`kek`: a private RSA JWK dict)."""

    def __init__(self, contract_digest: str, kek: dict, workdir: Path,
                 download: Callable[[str], bytes], upload: Callable[[str, bytes], None]):
        self.contract_digest, self.kek, self.workdir = contract_digest, kek, workdir
        self._download, self._upload = download, upload
        self.kek_name = model_states.kek_name(contract_digest)

    def keep(self, run_id: str, state_bytes: bytes) -> None:
        """Encrypt the state under a fresh data key, wrap that key under the state KEK, upload both
        (create-only: a run's state is written once)."""
        data_key, key_id = os.urandom(key_grants.DEK_BYTES), model_states.state_key_id(run_id)
        plain, encrypted = self.workdir / "model-state.zip", self.workdir / "model-state.ccr"
        plain.write_bytes(state_bytes)
        package.encrypt_file(plain, encrypted, data_key, key_id, model_states.CONTENT_TYPE, None)
        plain.unlink()
        wrapped = key_grants.wrap(data_key, _public_key(self.kek), self.kek_name, key_id)
        self._upload(model_states.wrapped_key_path(self.contract_digest, run_id), wrapped.encode("ascii"))
        self._upload(model_states.package_path(self.contract_digest, run_id), encrypted.read_bytes())
        encrypted.unlink()

    def restore(self, run_id: str) -> model_state.ModelState:
        """The state run `run_id` of this contract kept, decrypted and loaded (ModelStateError,
        GrantError or PackageError if it is not one this contract's clean room wrote)."""
        key_id = model_states.state_key_id(run_id)
        wrapped = self._download(model_states.wrapped_key_path(self.contract_digest, run_id)).decode("ascii", "replace")
        data_key = key_grants.unwrap(wrapped, self.kek, self.kek_name, key_id)
        encrypted, plain = self.workdir / "previous-state.ccr", self.workdir / "previous-state.zip"
        encrypted.write_bytes(self._download(model_states.package_path(self.contract_digest, run_id)))
        if package.read_header(encrypted.read_bytes()).key_id != key_id:
            raise model_state.ModelStateError("the previous model state is not the one its run kept")
        package.decrypt_file(encrypted, plain, data_key)
        try:
            return model_state.load(plain.read_bytes())
        finally:
            encrypted.unlink()
            plain.unlink()


def _public_key(kek: dict):
    """The pyca public half of a released RSA JWK (wrapping needs only that)."""
    public = jwk.JWK(**{k: v for k, v in kek.items() if k not in ("key_ops", "kid")})
    return public.get_op_key("wrapKey")
