"""Names of the blob containers and blobs every part agrees on."""
DATASETS = "datasets"
MODELS = "models"
OUTPUTS = "outputs"
CONTRACTS = "contracts"
RUNS = "runs"

PACKAGE_SUFFIX = ".ccr"


def dataset_blob(contract_id: str, dataset_name: str) -> str:
    return f"{contract_id}/{dataset_name}{PACKAGE_SUFFIX}"


def model_blob(contract_id: str) -> str:
    return f"{contract_id}/model{PACKAGE_SUFFIX}"


def output_blob(run_id: str) -> str:
    return f"{run_id}/output{PACKAGE_SUFFIX}"


def output_path(run_id: str) -> str:
    """`outputs/<run_id>/output.ccr`: the one blob a run's trainer may create."""
    return f"{OUTPUTS}/{output_blob(run_id)}"
