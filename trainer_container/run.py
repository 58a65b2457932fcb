"""One clean-room run, phase by phase: verify the signed contract against the digest the
container policy measured (trainer_container/consent.py), fetch and check the model package
(the privacy budget is checked here, before any data is read), fetch, check and
decrypt the datasets, join, train with DP-SGD, export and verify, encrypt the output for the
TDC, upload it, and publish the completion event (and, while training, one attested progress
event per epoch: progress_report.py). A contract allowing continued training or inference also
keeps the trained model state under its state key (state_store.py; with `weights_leave: false`
the TDC's output then carries no model); a continued run trains a declared new
version from the previous state (continued_run.py). A dataset's plaintext never reaches a file:
the join reads each package decrypted into a pipe (plaintext_pipe.py); the model package and the
output are the only plaintext files, in a temporary folder that is removed at the end. Storage is
reached only through the per-blob SAS URLs of
CCR_BLOB_URLS (never printed).

The release rule: everything that leaves (the output package, the completion event, stdout,
error messages) is a contract or config constant, or the output of a DP mechanism charged to
the run's one accountant (privacy_plan.py lists them). stdout carries phase names, constant
lines and, at the end, the epsilon spent; phase timings leave in whole seconds (an accepted
timing channel: README)."""
from __future__ import annotations

import tempfile
import time
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import numpy as np
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient

from shared import events, package, storage_names
from shared.blob_sas import blob_location
from shared.pipeline import PipelineConfigError, check_compatible
from jwcrypto import jwk

from shared import attested_outcome, key_grants, model_states
from trainer_container import continued_run, model_state
from trainer_container.consent import ConsentError, verified_contract
from trainer_container.contract_terms import ContractError, ContractTerms, PackageRef
from trainer_container.accountant import Accountant
from trainer_container.dp_evaluation import evaluate_private
from trainer_container.dp_sgd import PrivacyBudgetError
from trainer_container.environment import SettingsError, TrainerEnvironment
from trainer_container.export import ExportError, export_onnx, verify_onnx, with_standardization
from trainer_container.features import split_and_scale, split_with_standardizer
from trainer_container.join import JoinError, JoinSource, join_datasets
from trainer_container.model_package import read_model_package
from trainer_container.noisy_count import noisy_count
from trainer_container.onnx_convert import ModelConversionError, load_model, onnx_to_torch
from trainer_container.output_package import CONTENT_TYPE as OUTPUT_CONTENT_TYPE
from trainer_container.output_package import build_output_zip
from trainer_container.plaintext_pipe import decrypted_pipe
from trainer_container.privacy_plan import RunPrivacy
from trainer_container.progress_report import ProgressReport
from trainer_container.secure_random import SecureRandom
from trainer_container.skr_client import KeyReleaseError, SkrClient
from trainer_container.state_store import StateStore
from trainer_container.training import TrainingSetupError, check_model_fits, output_width, train_private


# The output goes up in one Put Blob: a create-only SAS cannot stage blocks.
OUTPUT_MAX_BYTES = 256 << 20


class DigestMismatch(ValueError):
    """A downloaded package is not the one the contract pins."""


class BlobAccessError(RuntimeError):
    """Storage refused or failed a blob operation (named by path, status and error code only)."""


# Errors whose messages are written to name fields, columns and datasets, never values.
SAFE_ERRORS = (SettingsError, ConsentError, ContractError, PipelineConfigError, PrivacyBudgetError, DigestMismatch,
               KeyReleaseError, key_grants.GrantError, package.PackageError, JoinError, ModelConversionError,
               TrainingSetupError, ExportError, BlobAccessError, model_state.ModelStateError,
               continued_run.ContinuationError)


def safe_error(exc: BaseException, known: tuple = SAFE_ERRORS, where: str = "the trainer") -> tuple[str, str]:
    """(error class, message) fit for logs and events: errors not `known` lose their message,
    which could quote data (pandas and torch errors often do)."""
    if isinstance(exc, known):
        return type(exc).__name__, str(exc)
    return type(exc).__name__, f"internal error in {where}"


class _Discard:
    """A sink that keeps nothing: a package decrypted into it is only authenticated."""

    @staticmethod
    def write(data) -> int:
        return len(data)


class TrainerRun:
    def __init__(self, env: TrainerEnvironment, workdir: Path, progress: Callable[[str], None] = print):
        self.env, self.workdir, self.progress = env, workdir, progress
        self.skr = SkrClient(env.skr_url, env.maa_url, env.ca_bundle)
        self.data_read = False  # set once a data-dependent computation starts (the join)
        self.timings: dict[str, int] = {}  # phase -> whole seconds
        self._phase: tuple[str, float] | None = None

    def phase(self, name: str) -> None:
        """Starts phase `name` (and ends the one before): its name goes to stdout, its duration
        in whole seconds to the outcome."""
        now = time.monotonic()
        if self._phase:
            self.timings[self._phase[0]] = int(now - self._phase[1])
        self._phase = (name, now) if name else None
        if name:
            self.progress(f"phase: {name}")

    def close(self) -> None:
        self.skr.close()

    def attested_event(self, outcome: dict) -> dict:
        """The completion event: the outcome (with this run's id and nonce, and whether any
        data-dependent computation started) signed by an ephemeral key that an attestation
        token of this group binds (shared/attested_outcome.py). Without a token the event
        carries the status only, and the control plane will not believe it."""
        statement = {**outcome, "run_id": self.env.run_id, "nonce": self.env.nonce, "data_read": self.data_read}
        data = {"run_id": self.env.run_id, "status": outcome["status"]}
        key = jwk.JWK.generate(kty="EC", crv="P-256")
        try:
            token = self.skr.attest(attested_outcome.runtime_data(key.export_public(as_dict=True), self.env.run_id,
                                                                   self.env.nonce))
        except KeyReleaseError as error:
            self.progress(f"outcome not attested: {error}")
            return data
        return {**data, "attestation": token, "outcome": attested_outcome.sign(statement, key)}

    def data_key(self, contract_digest: str, grant: key_grants.GrantSubject) -> bytes:
        """A data key through its owner's grant to this contract: the KEK is released only to
        this contract's attested group, then unwraps the data key the owner wrapped under it."""
        kek = key_grants.kek_name(contract_digest, grant.subject)
        path = key_grants.grant_path(contract_digest, grant.subject)
        with BlobClient.from_blob_url(self.env.blob_url(path)) as blob, storage_errors("download", path):
            wrapped = blob.download_blob().readall().decode("ascii", "replace")
        key_grants.check_header(wrapped, kek, grant.key_id)
        return key_grants.unwrap(wrapped, self.skr.release(grant.key_vault, kek), kek, grant.key_id)

    def state_store(self, contract_digest: str) -> StateStore:
        """The contract's model states, through its state KEK released to this attested group
        (asked before any data is read: a missing or refusing key fails the run untouched)."""
        if not self.env.state_vault:
            raise SettingsError("a continued-training contract needs CCR_KEYVAULT_URL (its state key's vault)")
        kek = self.skr.release(self.env.state_vault, model_states.kek_name(contract_digest))
        return StateStore(contract_digest, kek, self.workdir, self._download, self._create)

    def _download(self, path: str) -> bytes:
        with BlobClient.from_blob_url(self.env.blob_url(path)) as blob, storage_errors("download", path):
            return blob.download_blob().readall()

    def _create(self, path: str, data: bytes) -> None:
        with BlobClient.from_blob_url(self.env.blob_url(path), max_single_put_size=OUTPUT_MAX_BYTES) as blob, \
                storage_errors("upload", path):
            blob.upload_blob(data, overwrite=False)

    def download(self, ref: PackageRef) -> Path:
        """The encrypted package, once its header shows the digest the contract pins and the
        data key the contract names (decryption then checks the plaintext against that digest)."""
        encrypted = self.workdir / f"{ref.container}-{ref.name}.ccr"
        path = f"{ref.container}/{ref.blob}"
        with BlobClient.from_blob_url(self.env.blob_url(path)) as blob, storage_errors("download", path), \
                open(encrypted, "wb") as out:
            blob.download_blob().readinto(out)
        with open(encrypted, "rb") as src:
            header = package.read_header(src)
        if not header.manifest.matches(ref.pin):
            raise DigestMismatch(f"{ref.name}: package digest differs from the contract")
        if header.key_id != ref.grant.key_id:
            raise DigestMismatch(f"{ref.name}: package is encrypted under another data key than the contract names")
        return encrypted

    def fetch(self, ref: PackageRef, contract_digest: str) -> Path:
        """Download, check, get the data key through its grant and decrypt to a file (the model
        package, which is read as a zip)."""
        encrypted = self.download(ref)
        plain = self.workdir / f"{ref.container}-{ref.name}.plain"
        package.decrypt_file(encrypted, plain, self.data_key(contract_digest, ref.grant))  # verifies that digest
        encrypted.unlink()
        return plain

    def dataset_source(self, ref: PackageRef, contract_digest: str) -> tuple[Path, JoinSource]:
        """(the downloaded package, an opener of its plaintext as a pipe for the join). The whole
        package is authenticated first (every segment and the plaintext digest, the plaintext
        discarded), so no dataset reaches the join, nor any data-dependent computation starts,
        until every input is known intact; the join's pass then decrypts it again into the pipe."""
        encrypted = self.download(ref)
        key = self.data_key(contract_digest, ref.grant)
        with open(encrypted, "rb", buffering=0) as source:
            package.decrypt_stream(source, _Discard(), key)
        return encrypted, partial(decrypted_pipe, encrypted, key)

    def execute(self) -> dict:
        """Runs every phase; returns the outcome (the completion event's data)."""
        self.phase("contract")
        contract = verified_contract(self.env.envelope, self.env.contract_digest)
        terms = ContractTerms.from_contract(contract)
        continuation_path = model_states.continuation_path(terms.digest, self.env.run_id)
        continued = continued_run.checked(self._download(continuation_path), contract.payload, terms.digest,
                                          self.env.run_id) if continuation_path in self.env.blob_urls else None
        self.phase("model package")
        model_package = read_model_package(self.fetch(terms.model, terms.digest))
        config = model_package.training
        check_compatible(terms.join, config)
        if config.epsilon != terms.epsilon_limit:  # exactly what was reserved for this run
            raise PrivacyBudgetError(f"training config asks for epsilon {config.epsilon}, the contract reserved "
                                     f"{terms.epsilon_limit} for this run: they must be equal")
        model = onnx_to_torch(load_model(model_package.onnx_bytes))
        features = terms.join.feature_columns
        check_model_fits(model, config.loss, len(features))
        binary = config.loss != "cross_entropy" or output_width(model) == 2
        # from constants only: a budget too small for the fixed mechanisms stops here, before any data
        privacy = RunPrivacy.before_data(config.epsilon, terms.delta, terms.validation_split, terms.min_joined_rows,
                                         roc_auc=binary and "roc_auc" in config.metrics, loss="loss" in config.metrics)
        states = self.state_store(terms.digest) if terms.keeps_model_state else None
        start = {}
        if continued is not None:  # warm start: the kept model, checked against the contract's before any data
            state = states.restore(continued.previous_run_id)
            low, high = (np.array([config.feature_bounds[c][i] for c in features], dtype=np.float64) for i in (0, 1))
            model_state.check_fits(state, model, low, high)
            model, start = state.model, model_state.starting_point(state)
        self.phase("datasets")
        by_name = {ref.name: ref for ref in terms.datasets}
        if continued is not None:
            by_name[continued.dataset] = continued_run.version_ref(by_name[continued.dataset], continued)
        fetched = {d.name: self.dataset_source(by_name[d.name], terms.digest) for d in terms.join.datasets}
        self.phase("join")
        self.data_read = True
        table = join_datasets(terms.join, {name: source for name, (_, source) in fetched.items()})
        for encrypted, _ in fetched.values():
            encrypted.unlink()
        # All noise, the split and the batches come from a key drawn here from the OS: nobody,
        # the TDC included, can recompute the noise and subtract it from what is released.
        noise, accountant = SecureRandom(), Accountant()
        joined = noisy_count(len(table), privacy.noise.count, noise, accountant)
        privacy = privacy.after_count(joined, config.batch_size, config.epochs, config.max_grad_norm)
        self.phase("training")
        if continued is not None:  # the kept model's scaling: no statistics released, nothing charged for them
            split = split_with_standardizer(table, features, terms.join.target, terms.validation_split, noise,
                                            state.standardizer)
        else:
            split = split_and_scale(table, features, terms.join.target, terms.validation_split,
                                    config.feature_bounds, noise, privacy.noise.statistics, accountant)
        del table
        report = ProgressReport(self.env.run_id, self.env.nonce, self.skr, self.progress)
        report.start(privacy.dp_sgd, accountant.releases, privacy.delta)
        train_private(model, split, config, privacy.dp_sgd, noise, accountant, self.progress, report.epoch_done)
        self.phase("evaluation")
        evaluation = evaluate_private(model, split.val_x, split.val_y, config, privacy.noise, noise, accountant)
        privacy.check_charged(accountant)
        report = privacy_report(privacy, accountant)
        self.phase("export")
        exported = with_standardization(model, split.standardizer)
        onnx_bytes = export_onnx(exported, len(features))
        verify_onnx(onnx_bytes, exported, split.val_raw_x)
        self.progress("onnxruntime reproduces the torch model")
        kept = {}
        if states is not None:  # kept before the TDC's output: a success always leaves its state
            states.keep(self.env.run_id, model_state.save(model, split.standardizer, config.loss))
            kept = {"model_state_sha256": model_state.digest(model, split.standardizer)}
        metrics = {"validation": evaluation["metrics"], "mechanisms": evaluation["mechanisms"],
                   "feature_columns": list(features), "target_column": terms.join.target, "onnx_check": "passed",
                   "weights": "included" if terms.weights_leave else "withheld: the model stays in the clean room"}
        self.phase("output")
        released = onnx_bytes if terms.weights_leave else None  # the owner's `weights_leave: false`
        output_blob, output_blake3 = self.upload_output(build_output_zip(released, metrics, report), terms.output,
                                                        terms.digest)
        self.phase("")
        summary = {k: report[k] for k in ("epsilon", "delta", "target_epsilon", "accountant", "epsilon_rdp")}
        return {"run_id": self.env.run_id, "status": "succeeded", "output_blob": output_blob,
                "output_blake3": output_blake3, "privacy": summary, "phase_seconds": dict(self.timings), **kept, **start}

    def upload_output(self, zip_bytes: bytes, output: key_grants.GrantSubject, contract_digest: str) -> tuple[str, str]:
        plain, encrypted = self.workdir / "output.zip", self.workdir / "output.ccr"
        plain.write_bytes(zip_bytes)
        manifest = package.encrypt_file(plain, encrypted, self.data_key(contract_digest, output), output.key_id,
                                        OUTPUT_CONTENT_TYPE, None)
        if encrypted.stat().st_size > OUTPUT_MAX_BYTES:
            raise ExportError(f"the encrypted output is larger than {OUTPUT_MAX_BYTES >> 20} MiB")
        path = storage_names.output_path(self.env.run_id)
        with BlobClient.from_blob_url(self.env.blob_url(path), max_single_put_size=OUTPUT_MAX_BYTES) as blob, \
                storage_errors("upload", path), open(encrypted, "rb") as src:
            blob.upload_blob(src, overwrite=False)  # the one output of this run, created once
        return blob_location(blob.url), manifest.blake3  # a version-2 package


@contextmanager
def storage_errors(action: str, path: str) -> Iterator[None]:
    """Storage errors as BlobAccessError: the SDK's own text is not for logs and events."""
    try:
        yield
    except HttpResponseError as error:
        code = getattr(error.error_code, "value", error.error_code) or "no error code"
        raise BlobAccessError(f"{action} {path}: storage answered HTTP {error.status_code} ({code})") from None


def publish(data: dict, progress: Callable[[str], None]) -> bool:
    event_type = events.TRAINER_COMPLETED if data["status"] == "succeeded" else events.TRAINER_FAILED
    try:
        events.publish(event_type, f"runs/{data['run_id']}", data)
        return True
    except Exception as exc:  # the outcome is still reported by the exit code
        progress(f"completion event not published ({type(exc).__name__})")
        return False


def main(progress: Callable[[str], None] = print) -> int:
    """The container's entry point: 0 when the output is uploaded and the attested completion
    event published; a failure is attested and published too."""
    return run_workload(TrainerRun, progress, label="run", scratch="ccr-trainer-", safe=safe_error,
                        succeeded=lambda outcome: f"succeeded: epsilon {outcome['privacy']['epsilon']:.3f}")


def run_workload(run_class: type[TrainerRun], progress: Callable[[str], None], *, label: str, scratch: str,
                 safe: Callable[[BaseException], tuple[str, str]], succeeded: Callable[[dict], str],
                 failure_fields: Mapping[str, str] = MappingProxyType({})) -> int:
    """One workload run in the container (training, or inference: trainer_container/infer.py):
    `run_class(...).execute()` in a scratch folder, its outcome - or the failure, through `safe`,
    with `failure_fields` - attested and published. 2 when the environment is unusable."""
    try:
        env = TrainerEnvironment.from_environ()
    except Exception as exc:
        progress("failed: {}: {}".format(*safe(exc)))
        return 2
    progress(f"{label} {env.run_id}: starting")
    with tempfile.TemporaryDirectory(prefix=scratch) as workdir, \
            closing(run_class(env, Path(workdir), progress)) as run:
        try:
            outcome = run.execute()
            progress(succeeded(outcome))
        except Exception as exc:
            error_class, message = safe(exc)
            run.phase("")
            progress(f"failed: {error_class}: {message}")
            outcome = {"status": "failed", **failure_fields, "error_class": error_class, "message": message,
                       "phase_seconds": dict(run.timings)}
        published = publish(run.attested_event(outcome), progress)
    return 0 if outcome["status"] == "succeeded" and published else 1


def privacy_report(privacy: RunPrivacy, accountant: Accountant) -> dict:
    """privacy.json: the accountant's composition of every mechanism that ran (PLD total, RDP
    beside it, each mechanism alone), the plan's parameters (all from constants and the noisy
    count) and what leaves outside the epsilon."""
    plan = privacy.dp_sgd
    return {**accountant.report(privacy.delta), "target_epsilon": privacy.target_epsilon,
            "contract_delta": privacy.contract_delta, "joined_rows_noisy": round(privacy.joined_rows_estimate, 1),
            "noise_multiplier": plan.noise_multiplier, "max_grad_norm": plan.max_grad_norm,
            "sample_rate": plan.sample_rate, "steps": plan.steps, "epochs": plan.epochs,
            "expected_batch_size": plan.expected_batch_size,
            "feature_scaling": {
                "bounds": "public: the training config's feature_bounds; features clipped to them",
                "mechanism": "gaussian: per-feature sums of the bound-normalized training values, of their squares, "
                             "and the training-row count (L2 sensitivity sqrt(2d + 1))",
                "noise_multiplier": privacy.noise.statistics},
            "noise_source": "AES-256-CTR keystream keyed from os.urandom; Gaussians by Box-Muller, each the sum of "
                            "4 samples (Opacus secure mode); Poisson sampling and the split from the same stream",
            "outside_epsilon": [
                "phase timings in whole seconds (the container's lifetime is visible to the operator anyway)",
                "data-validity refusals (missing join keys or values, non-unique keys, non-label targets): "
                "the error class and a count-free message"]}
