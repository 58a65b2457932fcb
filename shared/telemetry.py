"""Observability of the Function App: Application Insights through OpenTelemetry, and logs that
carry the run they are about as fields.

`configure()` runs once at startup (function_app.py). With APPLICATIONINSIGHTS_CONNECTION_STRING
set it calls azure-monitor-opentelemetry's `configure_azure_monitor` (logs, traces and the Azure
SDK / requests instrumentations go to Application Insights); without it nothing is configured and
the package is not even imported, so the local twins and the tests run exactly as before.

`run_context(run_id=..., contract_id=...)` (or `run_context(run)` with a run's input) makes every
log record created inside it, by any logger, carry `run_id` and `contract_id` as record
attributes, exactly what logging's `extra` sets and what the exporter sends as custom
dimensions: the activities and triggers wrap their work in it. Ids only: never keys, tokens,
SAS URLs or data. Inside a run_context, pass no `run_id` / `contract_id` in `extra`: logging
refuses to overwrite a record attribute.
"""
from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

CONNECTION_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_SETTING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"   # "ClientId=...;Authorization=AAD"
RUN_FIELDS = ("run_id", "contract_id")

_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ccr_run_fields", default=None)
_configured = False
_factory_installed = False


def configure(environ: dict | None = None) -> bool:
    """Export to Application Insights when the connection string is set; True if configured.
    Idempotent: the worker may import function_app.py once only, tests more often."""
    global _configured
    install_run_fields()
    environ = environ if environ is not None else os.environ
    connection_string = environ.get(CONNECTION_SETTING)
    if not connection_string:
        return False
    if not _configured:
        from azure.monitor.opentelemetry import configure_azure_monitor

        # The app runs on App Service infrastructure (Flex Consumption): its resource detector
        # reads environment variables; the distro's default also runs the VM detector, which
        # probes the instance metadata endpoint (169.254.169.254) at every cold start.
        os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_app_service")
        options = {}
        if "authorization=aad" in environ.get(AUTHENTICATION_SETTING, "").lower():
            from shared.credentials import get_credential   # Entra ID ingestion, as infra/ sets for the host
            options["credential"] = get_credential()
        configure_azure_monitor(connection_string=connection_string, **options)
        _configured = True
    return True


def install_run_fields() -> None:
    """Records created while a run_context is active get its fields (a record factory, so logs
    from shared/ modules and the SDKs carry them too, whatever logger they use)."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _fields.get()
        if fields:
            for name, value in fields.items():
                record.__dict__.setdefault(name, value)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


@contextmanager
def run_context(run: dict | None = None, *, run_id: str | None = None,
                contract_id: str | None = None) -> Iterator[dict]:
    """Log records created inside carry `run_id` / `contract_id` (those known)."""
    install_run_fields()
    run = run or {}
    fields = {"run_id": run_id or run.get("run_id"), "contract_id": contract_id or run.get("contract_id")}
    fields = {name: value for name, value in fields.items() if isinstance(value, str) and value}
    token = _fields.set(fields or None)
    try:
        yield fields
    finally:
        _fields.reset(token)


def run_fields() -> dict:
    """The fields of the innermost run_context (empty outside one)."""
    return dict(_fields.get() or {})
