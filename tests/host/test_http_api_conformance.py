"""The Durable HTTP API as the extension's HttpApiHandler answers it (issue 13), on one host
for the module: check-status codes and headers, timestamps, purge by filter."""
import re

import requests

from tests.conftest import wait_until
from tests.host.conftest import start, status, wait_done

WHOLE_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def webhook(host, path: str = "") -> str:
    return f"{host.url}/runtime/webhooks/durabletask{path}"


def test_check_status_codes_follow_http_api_handler(shared_host):
    """202 (with Location and Retry-After: 5) while running; 200 once Completed, Failed or
    Terminated; 500 for Failed only with returnInternalServerErrorOnFailure=true."""
    host = shared_host
    running = start(host, "forever")
    answer = requests.get(running["statusQueryGetUri"], timeout=10)
    assert answer.status_code == 202 and answer.headers["Retry-After"] == "5"
    assert answer.headers["Location"] == running["statusQueryGetUri"]
    assert requests.post(running["terminatePostUri"].replace("{text}", "enough"), timeout=10).status_code == 202
    wait_done(running)
    terminated = requests.get(running["statusQueryGetUri"], timeout=10)
    assert (terminated.status_code, terminated.json()["runtimeStatus"]) == (200, "Terminated")
    assert "Location" not in terminated.headers and "Retry-After" not in terminated.headers

    failed = start(host, "broken")
    wait_done(failed)
    plain = requests.get(failed["statusQueryGetUri"], timeout=10)
    assert (plain.status_code, plain.json()["runtimeStatus"]) == (200, "Failed")
    strict = requests.get(failed["statusQueryGetUri"], params={"returnInternalServerErrorOnFailure": "true"},
                          timeout=10)
    assert (strict.status_code, strict.json()["runtimeStatus"]) == (500, "Failed")
    completed = wait_done(start(host, "fan_out", {"n": 1, "tag": "codes"}))
    assert requests.get(failed["statusQueryGetUri"].replace(failed["id"], completed["instanceId"]),
                        params={"returnInternalServerErrorOnFailure": "true"}, timeout=10).status_code == 200


def test_start_answers_202_with_retry_after_and_timestamps_have_no_fraction(shared_host):
    host = shared_host
    answer = requests.post(webhook(host, "/orchestrators/fan_out"), params={"code": host.system_key},
                           json={"n": 1, "tag": "stamps"}, timeout=10)
    assert answer.status_code == 202 and answer.headers["Retry-After"] == "10"
    assert answer.headers["Location"] == answer.json()["statusQueryGetUri"]
    done = wait_done(answer.json())
    assert WHOLE_SECONDS.match(done["createdTime"]) and WHOLE_SECONDS.match(done["lastUpdatedTime"])
    listing = requests.get(webhook(host, "/instances"), params={"code": host.system_key,
                                                                "instanceIdPrefix": done["instanceId"]},
                           timeout=10).json()
    assert [WHOLE_SECONDS.match(item["createdTime"]) is not None for item in listing] == [True]
