"""SDK-typed blob triggers (deferred binding): the function gets a working BlobClient built from
a reference, and the host never reads the blob's content; an InputStream trigger still gets it.
Measured on the host process: its peak resident set is reset just before a 64 MiB blob arrives
and read once the function has recorded it."""
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import wait_until
from tests.host.conftest import APP_DIR, records

MIB = 1024 * 1024
BIG = 64 * MIB
TAIL = bytes(range(16))
CLIENT_TYPE = "azure.storage.blob._blob_client.BlobClient"


@pytest.fixture
def containers(azurite):
    service = BlobServiceClient.from_connection_string(azurite)
    made = {kind: service.create_container(f"{kind}-{uuid.uuid4().hex[:12]}") for kind in ("sdk", "stream")}
    yield made
    for container in made.values():
        container.delete_container()


@pytest.fixture
def sdk_host(function_host, record_dir, containers):
    return function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(record_dir),
                                       "TEST_SDK_BLOB_CONTAINER": containers["sdk"].container_name,
                                       "TEST_BLOB_CONTAINER": containers["stream"].container_name})


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def peak_growth(pid: int, action) -> int:
    """How far the process's peak resident set rose above its resident set while `action` ran
    (writing 5 to clear_refs resets the peak to the current resident set)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_bytes(pid, "VmRSS")
    action()
    return _status_bytes(pid, "VmHWM") - before


def test_a_large_blob_fires_the_sdk_typed_function_once_without_the_host_reading_it(
        sdk_host, record_dir, containers):
    sdk, stream = containers["sdk"], containers["stream"]
    pid = sdk_host.process.pid
    big = b"\0" * (BIG - len(TAIL)) + TAIL

    sdk.upload_blob("warm/small.bin", b"w" * 40)  # first invocation: imports and clients warmed up
    wait_until(lambda: records(record_dir, "sdkblob"), 30, message="small blob fired")

    def arrive_sdk():
        sdk.upload_blob("in/big.ccr", big)
        wait_until(lambda: len(records(record_dir, "sdkblob")) == 2, 60, message="big blob fired")
    sdk_growth = peak_growth(pid, arrive_sdk)

    time.sleep(1.0)  # five more polls: nothing fires again
    assert records(record_dir, "sdkblob") == [
        f"{sdk.container_name}/warm/small.bin:{CLIENT_TYPE}:40:{(b'w' * 16).hex()}",
        f"{sdk.container_name}/in/big.ccr:{CLIENT_TYPE}:{BIG}:{TAIL.hex()}"]
    assert records(record_dir, "blob") == []  # the InputStream function watches another container
    assert sdk_growth < BIG // 8, f"host peak RSS grew {sdk_growth / MIB:.1f} MiB for a reference"

    def arrive_stream():  # the same blob to an InputStream trigger: the measure does see a download
        stream.upload_blob("big.bin", big)
        wait_until(lambda: records(record_dir, "blob"), 60, message="InputStream blob fired")
    stream_growth = peak_growth(pid, arrive_stream)
    assert records(record_dir, "blob") == [f"{stream.container_name}/big.bin:{BIG}:{BIG}"]
    assert stream_growth > BIG, f"host peak RSS grew only {stream_growth / MIB:.1f} MiB for a download"
