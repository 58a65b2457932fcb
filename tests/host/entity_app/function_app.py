"""Entity test app for the local host (not production code): a counter entity, a journal
entity, orchestrators that call and signal them, and an HTTP function driving the SDK
client's entity calls. Each operation's execution is appended to CCR_TEST_RECORD_DIR/ops.log
so tests can count how often an operation really ran."""
import json
import os

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


def record(line: str) -> None:
    path = os.path.join(os.environ["CCR_TEST_RECORD_DIR"], "ops.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


# Entities -------------------------------------------------------------------------------
@app.entity_trigger(context_name="context", entity_name="Counter")
def counter_entity(context: df.DurableEntityContext):
    """add n (refused below zero, before any change), add_then_fail n (changes, then raises),
    get, delete, unstorable (a state the SDK cannot serialize: the whole batch fails)."""
    operation = context.operation_name
    value = context.get_state(lambda: 0)
    record(f"{context.entity_key}:{operation}")
    if operation == "add":
        amount = context.get_input()
        if amount < 0:
            raise ValueError("amounts must not be negative")
        context.set_state(value + amount)
        context.set_result(value + amount)
    elif operation == "add_then_fail":
        context.set_state(value + context.get_input())
        raise RuntimeError("failed after changing the state")
    elif operation == "get":
        context.set_result(value)
    elif operation == "delete":
        context.destruct_on_exit()
    elif operation == "unstorable":
        context.set_state({value})
    else:
        raise ValueError(f"no operation {operation}")


@app.entity_trigger(context_name="context")
def journal(context: df.DurableEntityContext):
    """append x: the state is every input in the order the operations ran."""
    entries = context.get_state(list)
    entries.append(context.get_input())
    context.set_state(entries)
    context.set_result(len(entries))


# Orchestrators ---------------------------------------------------------------------------
@app.orchestration_trigger(context_name="context")
def counter_workflow(context: df.DurableOrchestrationContext):
    counter = df.EntityId("Counter", context.get_input()["key"])
    context.signal_entity(counter, "add", 5)
    after = yield context.call_entity(counter, "add", 2)
    try:
        yield context.call_entity(counter, "add", -1)
        refused = None
    except Exception as error:
        refused = str(error)
    final = yield context.call_entity(counter, "get")
    return {"after": after, "refused": refused, "final": final}


@app.orchestration_trigger(context_name="context")
def call_refused(context: df.DurableOrchestrationContext):
    """Calls an entity the app lacks and an entity key storage cannot hold."""
    errors = []
    for entity in (df.EntityId("Nowhere", "k"), df.EntityId("Counter", "a/b")):
        try:
            yield context.call_entity(entity, "get")
            errors.append(None)
        except Exception as error:
            errors.append(str(error))
    return errors


@app.orchestration_trigger(context_name="context")
def parallel_calls(context: df.DurableOrchestrationContext):
    """Two calls awaited together, and a signal between them."""
    keys = context.get_input()["keys"]
    first = context.call_entity(df.EntityId("Counter", keys[0]), "add", 1)
    context.signal_entity(df.EntityId("journal", keys[0]), "append", "between")
    second = context.call_entity(df.EntityId("Counter", keys[1]), "add", 2)
    return (yield context.task_all([first, second]))


@app.orchestration_trigger(context_name="context")
def call_op(context: df.DurableOrchestrationContext):
    job = context.get_input()
    try:
        return {"result": (yield context.call_entity(df.EntityId("Counter", job["key"]), job["op"])), "error": None}
    except Exception as error:
        return {"result": None, "error": str(error)}


@app.orchestration_trigger(context_name="context")
def add_once(context: df.DurableOrchestrationContext):
    job = context.get_input()
    return (yield context.call_entity(df.EntityId("Counter", job["key"]), "add", job["amount"]))


@app.orchestration_trigger(context_name="context")
def count_up(context: df.DurableOrchestrationContext):
    """n calls one after another: each answer is replayed in every later episode."""
    job = context.get_input()
    counter = df.EntityId("Counter", job["key"])
    answers = []
    for _ in range(job["n"]):
        answers.append((yield context.call_entity(counter, "add", 1)))
    return answers


# SDK client -----------------------------------------------------------------------------
@app.route(route="entity/{op}/{name}/{key}", methods=["POST", "GET"])
@app.durable_client_input(client_name="client")
async def entity_client(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """signal (body: {"op", "input"}) and read, through the SDK client's own calls."""
    entity = df.EntityId(req.route_params["name"], req.route_params["key"])
    if req.route_params["op"] == "signal":
        body = req.get_json()
        await client.signal_entity(entity, body["op"], body.get("input"))
        return func.HttpResponse(status_code=202)
    state = await client.read_entity_state(entity)
    return func.HttpResponse(json.dumps({"exists": state.entity_exists, "state": state.entity_state}),
                             mimetype="application/json")
