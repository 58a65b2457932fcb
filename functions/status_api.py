"""GET /api/runs and /api/runs/{run_id}: what the parties may know about runs."""
from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from functions.http_responses import error, json_response
from shared import azure_clients
from shared.run_records import RunRecords

bp = df.Blueprint()


@bp.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    records = RunRecords(azure_clients.blob_service()).list()
    records.sort(key=lambda record: record["created"], reverse=True)
    return json_response([_summary(record) for record in records])


@bp.route(route="runs/{run_id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def show_run(req: func.HttpRequest) -> func.HttpResponse:
    run_id = req.route_params.get("run_id", "")
    record = RunRecords(azure_clients.blob_service()).get(run_id) if run_id.startswith("run-") else None
    if record is None:
        return error(404, f"no run {run_id!r}")
    return json_response(record)


def _summary(record: dict) -> dict:
    keys = ("run_id", "contract_id", "status", "phase", "created", "finished", "container_group",
            "output_blob", "privacy_budget_spent")
    return {key: record.get(key) for key in keys}
