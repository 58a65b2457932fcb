"""`python -m trainer_container.infer`: one confidential inference run, the inference group's
entrypoint (its own command in the CCE policy, so its own host data: shared/container_group.py).

The run, phase by phase: verify the signed contract against the measured digest (as training
does), check the control plane's request against the contract and this run's id
(shared/inference_requests.py), before any key: the batch is under the name of a requester the
contract names. Then release the contract's model-state KEK and the requester's two keys (batch,
output), each through a grant pinned to this contract's inference group; restore the model from
the state the named training run kept inside the clean room (never from the TDC's package), score
the batch in memory (trainer_container/inference.py) and upload the predictions, encrypted under
the requester's output key, to the run's one predictions blob. The attested outcome carries the
row count and the batch's digest (the model owner and providers see who queried how much), never
a row or a prediction.

Release rule: predictions go to their requester only (docs/TRUST_CHAIN.md section 12); the
outcome's figures are the requester's own batch size and digests; errors name columns and
fields, never values (run.safe_error)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from azure.storage.blob import BlobClient

from shared import inference_requests, package
from shared import contract as contracts
from shared.blob_sas import blob_location
from trainer_container import run as training_run
from trainer_container.consent import verified_contract
from trainer_container.contract_terms import ContractTerms
from trainer_container.export import export_onnx, with_standardization
from trainer_container.inference import OUTPUTS, InferenceError, InferenceSpec, run_inference

SAFE_ERRORS = (*training_run.SAFE_ERRORS, InferenceError, inference_requests.RequestError)
PREDICTIONS_MAX_BYTES = training_run.OUTPUT_MAX_BYTES


def safe_error(exc: BaseException) -> tuple[str, str]:
    return training_run.safe_error(exc, SAFE_ERRORS, "the inference")


class InferenceRun(training_run.TrainerRun):
    """The training run's plumbing (attestation, grants, SAS URLs, phases), another story."""

    def execute(self) -> dict:
        self.phase("contract")
        contract = verified_contract(self.env.envelope, self.env.contract_digest)
        terms, payload = ContractTerms.from_contract(contract), contract.payload
        request = inference_requests.checked(
            self._download(inference_requests.request_path(terms.digest, self.env.run_id)), payload, terms.digest,
            self.env.run_id)
        workload = contracts.inference(payload)
        batch_grant, output_grant = inference_requests.grant_subjects(payload, request.requester)
        self.phase("batch")
        encrypted = self.workdir / "batch.ccr"
        with BlobClient.from_blob_url(self.env.blob_url(request.batch)) as blob, \
                training_run.storage_errors("download", request.batch), open(encrypted, "wb") as out:
            blob.download_blob().readinto(out)
        with open(encrypted, "rb") as src:
            header = package.read_header(src)
        if header.key_id != batch_grant.key_id:  # before any key is asked for
            raise InferenceError("the batch is not encrypted under the requester's inference key for this contract")
        self.phase("model state")
        state = self.state_store(terms.digest).restore(request.model_run_id)
        if state.loss not in OUTPUTS:
            raise InferenceError("the kept model gives no probability to infer (its loss is not a classifier's)")
        features = terms.join.feature_columns
        spec = InferenceSpec(features, OUTPUTS[state.loss], float(workload["threshold"]), int(workload["max_rows"]))
        onnx_model = export_onnx(with_standardization(state.model, state.standardizer), len(features))
        batch_key = self.data_key(terms.digest, batch_grant)
        output_key = self.data_key(terms.digest, output_grant)
        self.phase("inference")
        self.data_read = True
        predictions = self.workdir / "predictions.ccr"
        with open(encrypted, "rb") as batch:
            result = run_inference(onnx_model, spec, batch, batch_key, predictions, output_key, output_grant.key_id)
        encrypted.unlink()
        self.phase("output")
        output_blob = self._upload_predictions(predictions)
        self.phase("")
        return {"run_id": self.env.run_id, "status": "succeeded", "workload": "inference",
                "output_blob": output_blob, "output_blake3": result.manifest.blake3, "rows": result.rows,
                "batch": request.batch, "batch_commitment": header.manifest.pin(),
                "model_state_sha256": state.digest, "privacy": {"epsilon": 0.0, "delta": 0.0},
                "phase_seconds": dict(self.timings)}

    def _upload_predictions(self, predictions: Path) -> str:
        if predictions.stat().st_size > PREDICTIONS_MAX_BYTES:
            raise InferenceError(f"the encrypted predictions are larger than {PREDICTIONS_MAX_BYTES >> 20} MiB")
        path = inference_requests.predictions_path(self.env.run_id)
        with BlobClient.from_blob_url(self.env.blob_url(path), max_single_put_size=PREDICTIONS_MAX_BYTES) as blob, \
                training_run.storage_errors("upload", path), open(predictions, "rb") as src:
            blob.upload_blob(src, overwrite=False)  # created once, for the requester only
        predictions.unlink()
        return blob_location(blob.url)


def main(progress: Callable[[str], None] = print) -> int:
    """0 when the predictions are uploaded and the attested outcome published; a failure is
    attested and published too (never a row, never a value)."""
    return training_run.run_workload(InferenceRun, progress, label="inference", scratch="ccr-inference-",
                                     safe=safe_error, succeeded=lambda _: "succeeded",
                                     failure_fields={"workload": "inference"})

if __name__ == "__main__":
    sys.exit(main(lambda line: print(line, flush=True)))
