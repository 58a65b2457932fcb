"""Event subscriptions through the app (shared/party_events.py): a party subscribes its webhook
with its bearer token, the app fixes the subject filter to that party, and Event Grid (the
twin, through its ARM plane) delivers that party's run events only, whatever it asks for."""
from __future__ import annotations

import json
import threading

import pytest
import requests

from local_emulator.stack import wait_for
from local_emulator.tls import LoopbackServer
from orchestrations import tdc_notice
from shared import contract as contracts
from shared import party_events
from tests.auth.conftest import get, post


class Hook:
    """An https webhook that answers Event Grid's handshake and records what it receives."""

    def __init__(self, tls):
        self.received, self.validations = [], []
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._route, tls.server_context(), name="party-hook").start()
        self.url = f"{self.server.url}/events"

    def _route(self, method, path, query, headers, body):
        events = json.loads(body or b"[]")
        if headers.get("aeg-event-type") == "SubscriptionValidation":
            self.validations.append(events[0])
            return 200, {"validationResponse": events[0]["data"]["validationCode"]}, {}
        with self._lock:
            self.received.extend(events)
        return 200, None, {}


@pytest.fixture
def hooks(tls):
    made = []

    def make() -> Hook:
        made.append(Hook(tls))
        return made[-1]
    yield make
    for hook in made:
        hook.server.stop()


def delete(app, route: str, token: str) -> requests.Response:
    return requests.delete(f"{app.url}/api/{route}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def finished(stored, label: str, monkeypatch, eventgrid) -> None:
    """The run-finished notice of run `label`, published as the app's notify step does."""
    monkeypatch.setenv("CCR_EVENTGRID_TOPIC_URL", eventgrid.topic_.endpoint)
    monkeypatch.setenv("CCR_EVENTGRID_KEY", eventgrid.topic_.key)
    run = stored[label]
    message = {"run_id": run["run_id"], "contract_id": run["payload"]["contract_id"], "status": "succeeded"}
    assert tdc_notice.publish_event(message, contracts.parties(run["payload"])) == {"delivered": True}


def test_a_party_cannot_receive_another_partys_run_events(app, tokens, parties, stored, hooks, eventgrid,
                                                          monkeypatch):
    own, attacker = hooks(), hooks()
    answer = post(app, "subscriptions", {"name": "runs", "webhook": own.url}, tokens["tdc"])
    assert answer.status_code == 201, answer.text
    assert answer.json()["provisioning_state"] == "Succeeded" and own.validations
    # the rival asks for contract A's run by id, names the victim's subject itself, and reuses its name
    victim_run = stored["a"]["run_id"]
    attack = {"name": "runs", "webhook": attacker.url, "run_id": victim_run,
              "subject_begins_with": party_events.subject_prefix(parties["tdc"].did),
              "filter": {"subjectBeginsWith": "/"}}
    answer = post(app, "subscriptions", attack, tokens["rival"])
    assert answer.status_code == 201, answer.text
    stranger = post(app, "subscriptions", {"name": "all", "webhook": attacker.url}, tokens["stranger"])
    assert stranger.status_code == 201, stranger.text
    for name, subscription in ((s.name, s) for s in eventgrid.subscriptions("ccr-events")):
        owner = "rival" if name == party_events.arm_name(parties["rival"].did, "runs") else \
            "stranger" if name.endswith("-all") else "tdc"
        assert subscription.subject_begins_with == party_events.subject_prefix(parties[owner].did), name

    finished(stored, "a", monkeypatch, eventgrid)
    finished(stored, "b", monkeypatch, eventgrid)
    wait_for(lambda: own.received, 15, what="the TDC's own run event")
    wait_for(lambda: eventgrid.pending_deliveries() == 0, 15, what="every delivery")
    assert [e["subject"] for e in own.received] == [party_events.subject(parties["tdc"].did, victim_run)]
    assert own.received[0]["data"]["run_id"] == victim_run
    assert attacker.received == []      # neither the rival's run-specific nor the stranger's catch-all


def test_a_party_lists_and_deletes_only_its_own_subscriptions(app, tokens, hooks):
    hook = hooks()
    for party in ("icmr", "index"):
        answer = post(app, "subscriptions", {"name": "mine", "webhook": hook.url}, tokens[party])
        assert answer.status_code == 201, answer.text
    listed = get(app, "subscriptions", tokens["icmr"]).json()["subscriptions"]
    assert [(s["name"], s["webhook"], s["event_types"]) for s in listed] == [("mine", hook.url, ["CCR.Run.Finished"])]
    assert delete(app, "subscriptions/mine", tokens["cowin"]).status_code == 404    # not cowin's
    assert delete(app, "subscriptions/mine", tokens["icmr"]).status_code == 204
    assert get(app, "subscriptions", tokens["icmr"]).json() == {"subscriptions": []}
    assert [s["name"] for s in get(app, "subscriptions", tokens["index"]).json()["subscriptions"]] == ["mine"]
    assert delete(app, "subscriptions/mine", tokens["index"]).status_code == 204


@pytest.mark.parametrize("body, reason", [
    ({"name": "x", "webhook": "http://127.0.0.1:9/events"}, "https URL"),
    ({"name": "x", "webhook": "https://127.0.0.1:9/events"}, "Event Grid refused the subscription"),
    ({"name": "x", "webhook": "https://127.0.0.1:9/e", "event_types": ["CCR.Trainer.Completed"]}, "event_types"),
    ({"name": "../x", "webhook": "https://127.0.0.1:9/e"}, "name"),
])
def test_what_a_party_may_not_subscribe_is_refused(app, tokens, body, reason):
    answer = post(app, "subscriptions", body, tokens["tdc"])
    assert answer.status_code == 400 and reason in answer.json()["error"], answer.text


def test_subscriptions_need_a_party_token_not_the_function_key(app):
    assert post(app, "subscriptions", {"name": "x", "webhook": "https://127.0.0.1/e"}).status_code == 401
    assert get(app, "subscriptions", **{"x-functions-key": app.function_key}).status_code == 401
