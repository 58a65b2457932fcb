"""Telling the TDC that its run finished, on two channels: a `CCR.Run.Finished` Event Grid event
and a POST to the webhook its contract names (`tdc.output.webhook`).

Each channel is one attempt per activity call (`deliver`), raising `NoticeNotDelivered` when the
notice did not get through, so the orchestrator's Durable RetryOptions own the retries: durable
timers between attempts, no worker asleep inside an activity, and a host restart in between
loses nothing. A notice still undelivered after the last attempt is recorded on the run record
(`record`) and changes nothing about the run's outcome.

A notice carries the run id, contract id, status, output location and digest and the failure
reason: no keys, no SAS, no data. Errors name the exception class or HTTP status only.

The event goes out once under `runs/<run id>` (the operator's subscriptions) and once for each
party of the contract under that party's subject (`/parties/<hash of its DID>/runs/<run id>`),
which is all a party's own subscription can receive (shared/party_events.py).
"""
from __future__ import annotations

import requests

from shared import azure_clients, events, party_events, settings
from shared import contract as contracts
from shared.contract_store import ContractStore
from shared.run_records import RunRecords

CHANNELS = ("event", "webhook")
NOTICE_FIELDS = ("run_id", "contract_id", "status", "output_blob", "output_blake3", "reason")
WEBHOOK_TIMEOUT_SECONDS = 10


class NoticeNotDelivered(RuntimeError):
    """This attempt did not deliver the notice; the orchestrator may try again."""


def notice(summary: dict) -> dict:
    return {key: summary.get(key) for key in NOTICE_FIELDS}


def publish_event(message: dict, parties: list[str] = ()) -> dict:
    subjects = [f"runs/{message['run_id']}", *party_events.party_subjects(list(parties), message["run_id"])]
    try:
        events.publish_each(events.RUN_FINISHED, subjects, message)
    except Exception as error:  # noqa: BLE001 - any publisher failure is one failed attempt
        raise NoticeNotDelivered(f"Event Grid did not take the event ({type(error).__name__})") from None
    return {"delivered": True}


def post_webhook(webhook: str | None, message: dict) -> dict:
    if not webhook:
        return {"delivered": False, "reason": "the contract names no webhook"}
    try:
        response = requests.post(webhook, json=message, timeout=WEBHOOK_TIMEOUT_SECONDS, verify=settings.ca_bundle())
    except requests.RequestException as error:
        raise NoticeNotDelivered(f"TDC webhook not reached ({type(error).__name__})") from None
    if not response.ok:
        raise NoticeNotDelivered(f"TDC webhook answered {response.status_code}")
    return {"delivered": True, "status": response.status_code}


def _payload(run: dict) -> dict:
    record = ContractStore(azure_clients.blob_service()).get(run["contract_id"], run["contract_digest"])
    if record is None:
        raise RuntimeError(f"accepted contract {run['contract_id']} not found")
    return record["payload"]


def webhook_of(run: dict) -> str | None:
    return _payload(run)["tdc"].get("output", {}).get("webhook")


def deliver(run: dict, summary: dict, channel: str) -> dict:
    """One attempt on one channel: `{"delivered": True, ...}`, or NoticeNotDelivered."""
    if channel == "event":
        return publish_event(notice(summary), contracts.parties(_payload(run)))
    if channel == "webhook":
        return post_webhook(webhook_of(run), notice(summary))
    raise ValueError(f"unknown notice channel {channel!r}")


def record(run_id: str, delivery: dict) -> dict:
    """How the telling went, per channel, on the run record (its outcome is already there)."""
    RunRecords(azure_clients.blob_service()).finish(run_id, {"notification": delivery})
    return delivery
