"""Run one user function the way the worker does (sync ones in a thread pool, async ones on
the host's single event loop) and log one line per invocation: name, trigger, duration,
outcome. Never arguments or results. A function that raises is logged with its exception's
full traceback, message included, as the Functions host logs it (so control-plane code must
not put data in exception messages, as on Azure). Blob input and output bindings are read
before and written after the call (blob_bindings.py), from the trigger's `binding_data`."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.blob_bindings import BlobBindings, blob_bindings
from local_emulator.host.durable.failures import full_traceback, user_exception

log = logging.getLogger("local_emulator.host")


class Invoker:
    def __init__(self, max_workers: int = 16):
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="function")
        self.blobs = BlobBindings()

    async def invoke(self, entry: FunctionEntry, kwargs: dict[str, Any], quiet: bool = False,
                     binding_data: dict[str, Any] | None = None) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            with_blobs = bool(blob_bindings(entry, "in") or blob_bindings(entry, "out"))
            if with_blobs:
                kwargs = {**kwargs, **await self.blobs.inputs(entry, binding_data or {})}
            if entry.is_async:
                result = await entry.user_function(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.pool, functools.partial(entry.user_function, **kwargs))
            if with_blobs:
                await self.blobs.write_outputs(entry, kwargs, result, binding_data or {})
            return result
        except BaseException as error:
            outcome = f"failed ({type(error).__name__})"
            if isinstance(error, Exception):
                log.error("Executed '%s' (Failed)\n%s", entry.name, full_traceback(user_exception(error)))
            raise
        finally:
            if not quiet or outcome != "ok":
                log.info("invoked %s trigger=%s duration=%.1fms outcome=%s", entry.name,
                         entry.trigger_type, (time.perf_counter() - started) * 1000, outcome)

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.blobs.close()
