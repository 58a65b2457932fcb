"""Names of the blob containers and blobs every part agrees on."""
DATASETS = "datasets"
MODELS = "models"
OUTPUTS = "outputs"
CONTRACTS = "contracts"
RUNS = "runs"
GRANTS = "grants"

PACKAGE_SUFFIX = ".ccr"


def dataset_blob(dataset_name: str, key_id: str) -> str:
    """`<dataset>/<key id>.ccr`: one upload per encryption, which any number of contracts may
    name (the contract pins its digest; the provider grants its key per contract)."""
    return f"{dataset_name}/{key_id}{PACKAGE_SUFFIX}"


def model_blob(key_id: str) -> str:
    return f"model/{key_id}{PACKAGE_SUFFIX}"


def output_blob(run_id: str) -> str:
    return f"{run_id}/output{PACKAGE_SUFFIX}"


def output_path(run_id: str) -> str:
    """`outputs/<run_id>/output.ccr`: the one blob a run's trainer may create."""
    return f"{OUTPUTS}/{output_blob(run_id)}"
