"""A party's event subscriptions deliver the events of its own runs, and nothing else.

Claim: an event subscription a party creates through the app (`POST /api/subscriptions`)
receives only events whose subject names that party: `/parties/<sha256 of its DID>/runs/<run
id>`, which the app publishes once for each party of the run's contract (`party_subjects`).
The app, never the party, writes the subscription's `subjectBeginsWith` (`/parties/<hash>/`, a
fixed-length hash closed by `/`), so no choice of DID, name, event type or `subjectEndsWith`
reaches another party's subject; a party sees, renames or deletes only subscriptions whose
filter is its own. Attacks stopped: a party (or a stranger with a DID) subscribing to another
party's run events, a DID that is a prefix of another's (`did:web:a` vs `did:web:a.evil`), a
subscription name chosen to collide with another party's, and deleting or listing another
party's subscriptions.

The subscriptions themselves are Event Grid's, made through ARM (azure-mgmt-eventgrid) on the
run-events topic (`CCR_EVENTGRID_TOPIC_ID`) with the app's identity: Event Grid performs the
webhook's validation handshake and retries, as for any subscriber.
"""
from __future__ import annotations

import hashlib
import re

from shared import events

PARTY_EVENT_TYPES = (events.RUN_FINISHED,)
TOPIC_SETTING = "CCR_EVENTGRID_TOPIC_ID"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,23}$")
_PREFIX_CHARS = 16
MAX_SUBSCRIPTIONS = 10


class SubscriptionRefused(ValueError):
    """What the party asked for cannot be granted; `http_status` says how to answer."""

    def __init__(self, reason: str, http_status: int = 400):
        super().__init__(reason)
        self.http_status = http_status


def party_key(did: str) -> str:
    return hashlib.sha256(did.encode()).hexdigest()


def subject_prefix(did: str) -> str:
    return f"/parties/{party_key(did)}/"


def subject(did: str, run_id: str) -> str:
    """The subject of a run event as `did` receives it."""
    return f"{subject_prefix(did)}runs/{run_id}"


def party_subjects(parties: list[str], run_id: str) -> list[str]:
    return [subject(did, run_id) for did in dict.fromkeys(parties)]


def arm_name(did: str, name: str) -> str:
    """The Event Grid subscription's name: the party's hash prefix, then its own name."""
    if not isinstance(name, str) or not NAME.match(name):
        raise SubscriptionRefused("name: 1-24 letters, digits and '-', starting with a letter or digit")
    return f"p{party_key(did)[:_PREFIX_CHARS]}-{name}"


def own_name(did: str, arm: str) -> str | None:
    """The party's name of an Event Grid subscription, or None if it is not the party's."""
    prefix = f"p{party_key(did)[:_PREFIX_CHARS]}-"
    return arm[len(prefix):] if arm.lower().startswith(prefix) else None


class PartySubscriptions:
    """The party's subscriptions on the run-events topic, through an EventGridManagementClient."""

    def __init__(self, client, topic_id: str):
        self.client, self.topic_id = client, topic_id

    def create(self, did: str, name: str, webhook: str, event_types=None, run_id: str | None = None) -> dict:
        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.eventgrid.models import (EventSubscription, EventSubscriptionFilter, RetryPolicy,
                                                 WebHookEventSubscriptionDestination)
        if not isinstance(webhook, str) or not webhook.lower().startswith("https://") or len(webhook) > 2048:
            raise SubscriptionRefused("webhook: an https URL (Event Grid delivers to https endpoints only)")
        types = list(event_types) if event_types else list(PARTY_EVENT_TYPES)
        if not all(isinstance(t, str) for t in types) or set(types) - set(PARTY_EVENT_TYPES):
            raise SubscriptionRefused(f"event_types: a party may subscribe to {', '.join(PARTY_EVENT_TYPES)}")
        if run_id is not None and (not isinstance(run_id, str) or not re.fullmatch(r"run-[0-9a-f]{16}", run_id)):
            raise SubscriptionRefused("run_id: run-<16 hex digits>")
        arm = arm_name(did, name)
        if len(self.list(did)) >= MAX_SUBSCRIPTIONS and self._get(arm) is None:
            raise SubscriptionRefused(f"at most {MAX_SUBSCRIPTIONS} subscriptions per party", 409)
        info = EventSubscription(
            destination=WebHookEventSubscriptionDestination(endpoint_url=webhook),
            filter=EventSubscriptionFilter(included_event_types=types, subject_begins_with=subject_prefix(did),
                                           subject_ends_with=f"/runs/{run_id}" if run_id else None),
            retry_policy=RetryPolicy(max_delivery_attempts=30, event_time_to_live_in_minutes=1440),
            labels=["ccr-party"])
        try:
            created = self.client.event_subscriptions.begin_create_or_update(self.topic_id, arm, info).result()
        except HttpResponseError as error:
            if error.status_code is not None and error.status_code >= 500:
                raise
            raise SubscriptionRefused(f"Event Grid refused the subscription: {_first_line(error)}") from None
        return self._view(did, created)

    def list(self, did: str) -> list[dict]:
        prefix = subject_prefix(did)
        return [self._view(did, s) for s in self.client.event_subscriptions.list_by_resource(*self._topic_parts())
                if own_name(did, s.name) is not None and s.filter is not None and s.filter.subject_begins_with == prefix]

    def delete(self, did: str, name: str) -> bool:
        arm = arm_name(did, name)
        found = self._get(arm)
        if found is None or found.filter is None or found.filter.subject_begins_with != subject_prefix(did):
            return False
        self.client.event_subscriptions.begin_delete(self.topic_id, arm).result()
        return True

    def _get(self, arm: str):
        from azure.core.exceptions import ResourceNotFoundError
        try:
            return self.client.event_subscriptions.get(self.topic_id, arm)
        except ResourceNotFoundError:
            return None

    def _topic_parts(self) -> tuple[str, str, str, str]:
        parts = self.topic_id.strip("/").split("/")
        # subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.EventGrid/topics/<name>
        return parts[3], parts[5], parts[6], parts[7]

    @staticmethod
    def _view(did: str, subscription) -> dict:
        ends = subscription.filter.subject_ends_with if subscription.filter else None
        return {"name": own_name(did, subscription.name), "provisioning_state": subscription.provisioning_state,
                "webhook": subscription.destination.endpoint_base_url if subscription.destination else None,
                "event_types": subscription.filter.included_event_types if subscription.filter else None,
                "run_id": ends.rsplit("/", 1)[-1] if ends else None}


def _first_line(error) -> str:
    text = (getattr(error, "message", None) or str(error) or type(error).__name__).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
