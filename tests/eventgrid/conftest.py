"""Fixtures for the Event Grid twin: the twin (dead letters go to the session's Azurite), and a subscriber
webhook on 127.0.0.1 that answers the validation handshakes and scripted statuses."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from local_emulator.delivery import RetryPolicy
from local_emulator.eventgrid import EventGridTwin

FAST = RetryPolicy(initial_seconds=0.02, maximum_seconds=0.1, attempts=5, timeout_seconds=5)


class Subscriber:
    """Records notifications; answers validation (unless told not to) and the scripted
    statuses in turn (the last one repeats)."""

    def __init__(self, statuses=(200,), validate=True):
        self.statuses, self.validate = list(statuses), validate
        self.notifications, self.validations = [], []
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_OPTIONS(self):
                origin = self.headers.get("WebHook-Request-Origin")
                subscriber.validations.append({"origin": origin})
                self._reply(200, headers=[("WebHook-Allowed-Origin", origin)] if subscriber.validate else [])

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("aeg-event-type") == "SubscriptionValidation":
                    subscriber.validations.append(body[0])
                    answer = {"validationResponse": body[0]["data"]["validationCode"]} if subscriber.validate else {}
                    return self._reply(200, json.dumps(answer).encode())
                with lock:
                    subscriber.notifications.append({"headers": dict(self.headers), "body": body})
                    statuses = subscriber.statuses
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                self._reply(status)

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/events"

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def subscriber_factory():
    started = []

    def make(statuses=(200,), validate=True) -> Subscriber:
        started.append(Subscriber(statuses, validate))
        return started[-1]
    yield make
    for subscriber in started:
        subscriber.stop()


@pytest.fixture
def twin_factory(tmp_path, azurite):
    started = []

    def make(retry=FAST, data_dir=None, **options) -> EventGridTwin:
        twin = EventGridTwin(data_dir or tmp_path / "eventgrid", azurite, retry=retry, **options)
        started.append(twin.start())
        return twin
    yield make
    for twin in started:
        twin.stop()
