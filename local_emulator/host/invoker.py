"""Run one user function the way the worker does (sync ones in a thread pool, async ones on
the host's single event loop) and log one line per invocation: name, trigger, duration,
outcome. Never arguments or results. A function that raises is logged with its exception's
full traceback, message included, as the Functions host logs it (so control-plane code must
not put data in exception messages, as on Azure)."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.durable.failures import full_traceback, user_exception

log = logging.getLogger("local_emulator.host")


class Invoker:
    def __init__(self, max_workers: int = 16):
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="function")

    async def invoke(self, entry: FunctionEntry, kwargs: dict[str, Any], quiet: bool = False) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            if entry.is_async:
                return await entry.user_function(**kwargs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, functools.partial(entry.user_function, **kwargs))
        except BaseException as error:
            outcome = f"failed ({type(error).__name__})"
            if isinstance(error, Exception):
                log.error("Executed '%s' (Failed)\n%s", entry.name, full_traceback(user_exception(error)))
            raise
        finally:
            if not quiet or outcome != "ok":
                log.info("invoked %s trigger=%s duration=%.1fms outcome=%s", entry.name,
                         entry.trigger_type, (time.perf_counter() - started) * 1000, outcome)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
