"""Test app for admission crashes (not production code): the app's own admission
(orchestrations.admission.start_run_if_ready) behind an HTTP route, and a stand-in `ccr_run`
orchestrator that records each run it executes under CCR_TEST_RECORD_DIR."""
import json
import os

import azure.durable_functions as df
import azure.functions as func

from orchestrations.admission import start_run_if_ready

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="admit/{contract_id}/{digest}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def admit(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    answer = await start_run_if_ready(client, req.route_params["contract_id"], req.route_params["digest"])
    return func.HttpResponse(json.dumps(answer), mimetype="application/json")


@app.orchestration_trigger(context_name="context", orchestration="ccr_run")
def run_stand_in(context: df.DurableOrchestrationContext):
    yield context.call_activity("note_run", context.get_input()["run_id"])
    return "ran"


@app.activity_trigger(input_name="run_id")
def note_run(run_id: str) -> None:
    with open(os.path.join(os.environ["CCR_TEST_RECORD_DIR"], "runs.log"), "a") as log:
        log.write(run_id + "\n")
