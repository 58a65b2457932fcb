"""The app bench/durable_throughput.py drives: an HTTP starter, a fan-out of trivial
activities, and a probe of the activity hop (scheduled -> started)."""
from datetime import datetime, timezone

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="orchestrators/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client) -> func.HttpResponse:
    instance_id = await client.start_new(req.route_params["name"], None, req.get_json())
    return client.create_check_status_response(req, instance_id)


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):
    cities = context.get_input()
    greetings = yield context.task_all([context.call_activity("say_hello", city) for city in cities])
    return greetings


@app.activity_trigger(input_name="city")
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@app.orchestration_trigger(context_name="context")
def hop_probe(context: df.DurableOrchestrationContext):
    """Activities one after another, each returning when it began."""
    began = []
    for _ in range(context.get_input()):
        began.append((yield context.call_activity("began_at", None)))
    return began


@app.activity_trigger(input_name="unused")
def began_at(unused) -> str:
    return datetime.now(timezone.utc).isoformat()
