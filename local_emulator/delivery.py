"""At-least-once delivery with exponential backoff, persisted so pending work survives a
restart of the twin that owns it (the ledger's webhook calls, Event Grid's deliveries).

A job is a JSON object stored as one file; `attempt(job)` makes one try and returns DONE,
RETRY or GIVE_UP (an exception counts as RETRY); after the last failed try `exhausted(job)` is called.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from local_emulator.tls import write_private

log = logging.getLogger(__name__)

DONE, RETRY, GIVE_UP = "done", "retry", "give-up"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `initial_seconds`, doubled per failure up to `maximum_seconds`,
    at most `attempts` tries; `timeout_seconds` bounds each try."""
    initial_seconds: float = 1.0
    maximum_seconds: float = 60.0
    attempts: int = 12
    timeout_seconds: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.maximum_seconds, self.initial_seconds * 2 ** (failures - 1))


def is_retryable(status: int | None) -> bool:
    """Transport failures, 408, 429 and 5xx are worth another try; other 4xx are answers."""
    return status is None or status in (408, 429) or status >= 500


class DeliveryQueue:
    """Persisted jobs tried by a small thread pool when due: `start()`, `add(job)`, `pending()`, `stop()`."""

    def __init__(self, folder: Path, attempt: Callable[[dict], str], exhausted: Callable[[dict], None],
                 policy: RetryPolicy, workers: int = 4, name: str = "delivery"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self._attempt, self._exhausted, self._workers, self._name = attempt, exhausted, workers, name
        self._wake = threading.Condition()
        self._due: dict[str, float] = {}   # job id -> wall-clock time of its next try
        self._running = False
        self._scheduler: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=self._name)
        with self._wake:
            self._running = True
            now = time.time()
            for path in self.folder.glob("*.json"):
                job = json.loads(path.read_text())
                # the persisted back-off, or this policy's if that is sooner (a restart may change it)
                retry_at = now + self.policy.delay(job["attempts"]) if job["attempts"] else now
                self._due[path.stem] = min(job["next_due"], retry_at)
        self._scheduler = threading.Thread(target=self._schedule, name=f"{self._name}-scheduler", daemon=True)
        self._scheduler.start()

    def stop(self) -> None:
        """Stop scheduling; tries in progress finish; pending jobs stay on disk."""
        with self._wake:
            self._running = False
            self._wake.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()
            self._scheduler = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def add(self, job: dict) -> str:
        job_id = uuid.uuid4().hex
        job = {**job, "id": job_id, "attempts": 0, "next_due": time.time()}
        self._save(job)
        with self._wake:
            self._due[job_id] = job["next_due"]
            self._wake.notify_all()
        return job_id

    def pending(self) -> int:
        return len(list(self.folder.glob("*.json")))

    def _save(self, job: dict) -> None:
        write_private(self.folder / f"{job['id']}.json", json.dumps(job).encode())   # events can carry run data

    def _schedule(self) -> None:
        with self._wake:
            while self._running:
                now = time.time()
                for job_id in [j for j, due in self._due.items() if due <= now]:
                    del self._due[job_id]
                    self._pool.submit(self._try, job_id)
                wait = min(self._due.values(), default=now + 3600) - now
                self._wake.wait(timeout=min(max(wait, 0.0), 3600))

    def _try(self, job_id: str) -> None:
        path = self.folder / f"{job_id}.json"
        job = json.loads(path.read_text())
        try:
            outcome = self._attempt(job)
        except Exception as error:   # left unhandled, the job would sit on disk untried until a restart
            log.warning("%s: a delivery attempt failed (%s); will retry", self._name, type(error).__name__)
            outcome = RETRY
        job["attempts"] += 1
        limit = job.get("max_attempts") or self.policy.attempts
        if outcome == RETRY and job["attempts"] < limit:
            job["next_due"] = time.time() + self.policy.delay(job["attempts"])
            self._save(job)
            with self._wake:
                if self._running:
                    self._due[job_id] = job["next_due"]
                    self._wake.notify_all()
            return
        if outcome != DONE:
            self._exhausted(job)
        path.unlink()
