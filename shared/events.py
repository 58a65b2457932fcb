"""Event types the system publishes to Event Grid, and one way to publish them.
Event data carries ids, statuses and locations only: never rows, keys or tokens."""
from __future__ import annotations

from azure.eventgrid import EventGridEvent

from shared import azure_clients

TRAINER_COMPLETED = "CCR.Trainer.Completed"
TRAINER_FAILED = "CCR.Trainer.Failed"
RUN_FINISHED = "CCR.Run.Finished"
TRAINER_PROGRESS = "CCR.Trainer.Progress"
DATA_VERSION = "1.0"


def publish(event_type: str, subject: str, data: dict) -> None:
    azure_clients.event_publisher().send(
        [EventGridEvent(subject=subject, event_type=event_type, data=data, data_version=DATA_VERSION)])


def publish_each(event_type: str, subjects: list[str], data: dict) -> None:
    """One event per subject, in one batch (e.g. a run event for each party: shared/party_events.py)."""
    azure_clients.event_publisher().send(
        [EventGridEvent(subject=subject, event_type=event_type, data=data, data_version=DATA_VERSION)
         for subject in subjects])
