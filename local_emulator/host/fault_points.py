"""Named fault-injection points: a test names one in CCR_HOST_FAULT_POINT and the host kills
itself with SIGKILL when it gets there, so a crash can be placed between any two writes of a
step (what `kill -9` at the right instant would do, without guessing the instant).

Points: durable.start.before_message, durable.start.after_message, durable.start.after_state
(creating an instance: its start message, then its instance row)."""
from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger("local_emulator.host")


def reached(point: str) -> None:
    if os.environ.get("CCR_HOST_FAULT_POINT") != point:
        return
    log.warning("fault point %s reached: killing the host", point)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
