"""Names of the blob containers and blobs every part agrees on."""
DATASETS = "datasets"
MODELS = "models"
OUTPUTS = "outputs"
CONTRACTS = "contracts"
RUNS = "runs"
GRANTS = "grants"
MODEL_STATES = "model-states"  # trained model states kept for continued training (shared/model_states.py)
INFERENCE_BATCHES = "inference-batches"  # a requester's encrypted batches (shared/inference_requests.py)
PREDICTIONS = "predictions"              # each inference run's encrypted predictions, for its requester only

PACKAGE_SUFFIX = ".ccr"


def dataset_blob(party: str, dataset_name: str, key_id: str) -> str:
    """`<party>/<dataset>/<key id>.ccr`: one upload per encryption, which any number of contracts
    may name (the contract pins its digest; the provider grants its key per contract). `party`
    is the provider's name (`shared.did.did_name`): a party's SAS reaches only its own prefix
    (`shared.party_sas`)."""
    return f"{party}/{dataset_name}/{key_id}{PACKAGE_SUFFIX}"


def dataset_version_blob(party: str, dataset_name: str, key_id: str, version: int) -> str:
    """`<party>/<dataset>/<key id>.v<version>.ccr`: a later version of a dataset, encrypted under
    the data key its provider already granted (shared/continuation.py)."""
    return f"{party}/{dataset_name}/{key_id}.v{version}{PACKAGE_SUFFIX}"


def dataset_of_blob(blob_name: str) -> tuple[str, str] | None:
    """(party, dataset) of a blob named `<party>/<dataset>/...` in `datasets/`, else None."""
    parts = blob_name.split("/")
    return (parts[0], parts[1]) if len(parts) == 3 and all(parts) else None


def model_blob(party: str, key_id: str) -> str:
    """`<party>/<key id>.ccr`: the TDC's model package, under the TDC's name."""
    return f"{party}/{key_id}{PACKAGE_SUFFIX}"


def output_blob(run_id: str) -> str:
    return f"{run_id}/output{PACKAGE_SUFFIX}"


def output_path(run_id: str) -> str:
    """`outputs/<run_id>/output.ccr`: the one blob a run's trainer may create."""
    return f"{OUTPUTS}/{output_blob(run_id)}"
