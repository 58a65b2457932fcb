"""HTTP triggers through the local host: routes, route parameters, auth levels."""
import secrets

import requests

from tests.host.conftest import APP_DIR, start, status


def test_function_route_needs_the_key(host):
    url = f"{host.url}/api/hello/ada"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"x-functions-key": "wrong"}, timeout=10).status_code == 401
    assert requests.get(url, params={"code": host.system_key}, timeout=10).status_code == 401
    by_header = requests.get(url, params={"q": "hi"}, headers={"x-functions-key": host.function_key}, timeout=10)
    assert (by_header.status_code, by_header.text) == (200, "hello ada hi")
    by_query = requests.post(url, params={"code": host.function_key}, timeout=10)
    assert (by_query.status_code, by_query.text) == (200, "hello ada")


def test_anonymous_route_is_open_and_keeps_its_content_type(host):
    response = requests.get(f"{host.url}/api/open", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"open": True}


def test_unknown_route_and_wrong_method(host):
    key = {"x-functions-key": host.function_key}
    assert requests.get(f"{host.url}/api/nothing/here", headers=key, timeout=10).status_code == 404
    assert requests.delete(f"{host.url}/api/hello/ada", headers=key, timeout=10).status_code == 405


def test_each_invocation_is_logged_without_payloads(host):
    secret = "do-not-log-this-value"
    requests.post(f"{host.url}/api/hello/ada", params={"code": host.function_key}, data=secret, timeout=10)
    host.stop()
    logs = host.logs()
    assert "invoked hello trigger=httpTrigger" in logs and "outcome=ok" in logs
    assert secret not in logs and host.function_key not in logs


def test_admin_routes_need_the_master_key(host):
    url = f"{host.url}/admin/host/status"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, params={"code": host.function_key}, timeout=10).status_code == 401
    allowed = requests.get(url, headers={"x-functions-key": host.master_key}, timeout=10)
    assert (allowed.status_code, allowed.json()) == (200, {"state": "Running"})


def test_durable_management_webhooks_need_the_system_key(host):
    url = f"{host.url}/runtime/webhooks/durabletask/instances/whatever"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, params={"code": host.function_key}, timeout=10).status_code == 401
    assert requests.get(url, params={"code": host.system_key}, timeout=10).status_code == 404


def test_check_status_links_work_with_an_azure_style_system_key(function_host, record_dir):
    host = function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(record_dir),
                                       "CCR_DURABLE_SYSTEM_KEY": "a+b/c==" + secrets.token_hex(8)})
    links = start(host, "forever")
    assert status(links)["name"] == "forever"  # '+', '/' and '=' survive the query string
    assert requests.post(links["terminatePostUri"].replace("{text}", "done"), timeout=10).status_code == 202
