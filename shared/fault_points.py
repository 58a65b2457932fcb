"""Named fault-injection points for crash tests: when the setting CCR_FAULT_POINT names a point,
the process that reaches it kills itself with SIGKILL there, so a test can place a crash
between any two writes of a step (kill -9 at exactly that instant). Unset, as in Azure, a
point costs one dictionary lookup.

Points: admission.after_record, admission.after_start (orchestrations/admission.py);
durable.start.before_message, durable.start.after_message, durable.start.after_state (the
local host creating an instance); durable.entity.before_commit, durable.entity.after_commit
(the local host around writing an entity batch's state); durable.rewind.before_commit,
durable.rewind.after_commit (the local host applying a rewind: after its sends, after its commit)."""
from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger(__name__)


def reached(point: str) -> None:
    if os.environ.get("CCR_FAULT_POINT") != point:
        return
    log.warning("fault point %s reached: killing the process", point)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
