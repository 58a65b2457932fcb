"""kill -9 at each admission fault point (orchestrations/admission.py; issue 13 item 9): after
the run record is written but before the orchestration is started, and after it is started.
Once the host is back and the contract's event comes again (the ledger redelivers), each
contract has exactly one started run, executed once."""
import secrets
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from shared.contract_store import ContractStore, contract_inputs, split_blob_path
from shared.run_records import run_id_for
from tests.conftest import wait_until

APP_DIR = Path(__file__).parent / "admission_app"
POINTS = ["admission.after_record", "admission.after_start"]


def contract_with_inputs(connection: str) -> tuple[str, str]:
    """A stored contract whose inputs have all arrived: admission will start its run."""
    contract_id = "crash-" + secrets.token_hex(4)
    payload = {"contract_id": contract_id, "tdc": {"model": {"blob": f"models/{contract_id}.ccr"}},
               "tdps": [{"datasets": [{"name": "d", "blob": f"datasets/{contract_id}.ccr"}]}],
               "workloads": {"training": {"deadline_seconds": 60}}}
    digest = secrets.token_hex(32)
    service = BlobServiceClient.from_connection_string(connection)
    ContractStore(service).accept(payload, digest, "", None)
    for item in contract_inputs(payload):
        container, name = split_blob_path(item["blob"])
        try:
            service.create_container(container)
        except ResourceExistsError:
            pass
        service.get_blob_client(container, name).upload_blob(b"ciphertext", overwrite=True)
    return contract_id, digest


def test_kill_9_at_each_admission_point_ends_with_one_run(function_host, azurite, tmp_path):
    contracts = {point: contract_with_inputs(azurite) for point in POINTS}
    host = function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(tmp_path), "CCR_ADMISSION_GRACE_SECONDS": "2",
                                       "CCR_FAULT_POINT": POINTS[0]})

    def admit(point: str) -> dict:
        contract_id, digest = contracts[point]
        answer = requests.post(f"{host.url}/api/admit/{contract_id}/{digest}", params={"code": host.function_key},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()
    for index, point in enumerate(POINTS):
        with pytest.raises(requests.ConnectionError):
            admit(point)
        host.kill()  # reaped, and its output read to the end
        assert f"fault point {point} reached" in host.logs()
        host.env["CCR_FAULT_POINT"] = POINTS[index + 1] if index + 1 < len(POINTS) else ""
        host.start()

    # the redelivered event: the run claimed but never started is started now, the other exists
    first, second = admit(POINTS[0]), admit(POINTS[1])
    assert (first["started"], second["started"], second["reason"]) == (True, False, "run already exists")
    run_ids = sorted(run_id_for(*contracts[point]) for point in POINTS)

    def runs() -> list[str]:
        path = tmp_path / "runs.log"
        return sorted(path.read_text().split()) if path.exists() else []
    wait_until(lambda: runs() == run_ids, 30, 0.2, "both runs executed")
    again = [admit(point) for point in POINTS]
    assert [answer.get("reason") for answer in again] == ["run already exists"] * 2
    for run_id in run_ids:
        status = requests.get(f"{host.url}/runtime/webhooks/durabletask/instances/{run_id}",
                              params={"code": host.system_key}, timeout=10).json()
        assert (status["runtimeStatus"], status["output"]) == ("Completed", "ran")
    assert runs() == run_ids
