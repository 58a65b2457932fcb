"""Test app for the local host (not production code): one function per feature under test.
Side effects go to files under CCR_TEST_RECORD_DIR so tests can count executions."""
import asyncio
import datetime as dt
import json
import os
import time

import azure.durable_functions as df
import azure.functions as func
import azurefunctions.extensions.bindings.blob as sdk_blob

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
BLOB_CONTAINER = os.environ.get("TEST_BLOB_CONTAINER", "testblobs")
SDK_BLOB_CONTAINER = os.environ.get("TEST_SDK_BLOB_CONTAINER", "testsdkblobs")


def record(kind: str, line: str) -> int:
    """Append one line to <record dir>/<kind>.log; returns how many lines it now holds."""
    path = os.path.join(os.environ["CCR_TEST_RECORD_DIR"], f"{kind}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    with open(path) as handle:
        return sum(1 for _ in handle)


# HTTP -----------------------------------------------------------------------------------
@app.route(route="hello/{name}", methods=["GET", "POST"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"hello {req.route_params['name']} {req.params.get('q', '')}".strip(),
                             status_code=200)


@app.route(route="fails")
def fails(req: func.HttpRequest) -> func.HttpResponse:
    raise LookupError("nothing under " + req.params.get("key", "?"))


@app.route(route="open", auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse('{"open": true}', mimetype="application/json")


@app.route(route="orchestrators/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    body = req.get_body()
    instance_id = await client.start_new(req.route_params["name"], req.params.get("id"),
                                         req.get_json() if body else None, version=req.params.get("version"))
    return client.create_check_status_response(req, instance_id)


@app.route(route="manage/{op}/{instance_id}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def manage(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Drives the SDK client's other calls (status, raise event, terminate, purge, suspend,
    resume, restart, rewind, queries); a call the SDK refuses answers 409 with its message."""
    op, instance_id = req.route_params["op"], req.route_params["instance_id"]
    body = req.get_json() if req.get_body() else {}
    if op == "status":
        status = await client.get_status(instance_id, show_history=True)
        return func.HttpResponse(json.dumps({
            "runtimeStatus": status.runtime_status.value if status.runtime_status else None,
            "output": status.output, "customStatus": status.custom_status,
            # the extension's status payload names the list historyEvents, which the SDK's
            # DurableOrchestrationStatus keeps as an attribute of that name (`history` stays None)
            "history": [e["EventType"] for e in getattr(status, "historyEvents", None) or []],
            "sdk_history": status.history}), mimetype="application/json")
    if op == "raise":
        await client.raise_event(instance_id, body["event"], body.get("data"))
    elif op == "terminate":
        await client.terminate(instance_id, body.get("reason", "stopped"))
    elif op == "purge":
        result = await client.purge_instance_history(instance_id)
        return func.HttpResponse(json.dumps({"deleted": result.instances_deleted}))
    elif op == "start":
        try:
            await client.start_new(body["name"], instance_id, body.get("input"))
        except Exception as refused:
            return func.HttpResponse(json.dumps({"refused": str(refused)}), status_code=409)
    elif op in ("suspend", "resume", "restart", "rewind"):
        try:
            if op == "restart":
                restarted = await client.restart(instance_id, body.get("new_id", True))
                return func.HttpResponse(json.dumps({"restarted": restarted}), mimetype="application/json")
            await getattr(client, op)(instance_id, body.get("reason", "test"))
        except Exception as refused:
            return func.HttpResponse(json.dumps({"refused": str(refused)}), status_code=409)
    elif op == "all":
        statuses = await client.get_status_all()
        return func.HttpResponse(json.dumps(sorted(s.instance_id for s in statuses)))
    elif op == "running":
        statuses = await client.get_status_by(runtime_status=[df.OrchestrationRuntimeStatus.Running])
        return func.HttpResponse(json.dumps(sorted(s.instance_id for s in statuses)))
    return func.HttpResponse(status_code=202)


# Orchestrators --------------------------------------------------------------------------
@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    job = context.get_input()
    tasks = [context.call_activity("work", {"i": i, "tag": job.get("tag", ""),
                                            "sleep": job.get("sleep", 0) * (i + 1 if job.get("stagger") else 1)})
             for i in range(job["n"])]
    results = yield context.task_all(tasks)
    return sum(results)


@app.orchestration_trigger(context_name="context")
def with_retry(context: df.DurableOrchestrationContext):
    job = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=200, max_number_of_attempts=3)
    value = yield context.call_activity_with_retry("flaky", options, {"key": job["key"], "fail": job["fail"]})
    return value


@app.orchestration_trigger(context_name="context")
def retry_exhausted(context: df.DurableOrchestrationContext):
    options = df.RetryOptions(first_retry_interval_in_milliseconds=100, max_number_of_attempts=2)
    try:
        yield context.call_activity_with_retry("flaky", options, {"key": context.get_input(), "fail": 99})
    except Exception as error:
        after = yield context.call_activity("work", {"i": 7, "sleep": 0, "tag": "after"})
        return {"failed": "boom" in str(error), "after": after}
    return {"failed": False}


@app.orchestration_trigger(context_name="context")
def timer(context: df.DurableOrchestrationContext):
    started = context.current_utc_datetime
    yield context.create_timer(started + dt.timedelta(seconds=1.5))
    return (context.current_utc_datetime - started).total_seconds()


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    context.set_custom_status({"stage": "waiting"})
    deadline = context.current_utc_datetime + dt.timedelta(seconds=context.get_input()["timeout"])
    event = context.wait_for_external_event("approve")
    timeout = context.create_timer(deadline)
    winner = yield context.task_any([event, timeout])
    if winner == event:
        timeout.cancel()
        context.set_custom_status({"stage": "approved"})
        return {"approved": event.result}
    context.set_custom_status({"stage": "timed out"})
    return {"approved": None}


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    first = yield context.call_sub_orchestrator("child", {"x": context.get_input()})
    second = yield context.call_sub_orchestrator("child", {"x": first}, "fixed-child-" + context.instance_id)
    return [first, second]


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    value = yield context.call_activity("double", context.get_input()["x"])
    return value + 1


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext):
    state = context.get_input()
    value = yield context.call_activity("double", state["n"])
    if state["n"] < 3:
        context.continue_as_new({"n": state["n"] + 1, "seen": state["seen"] + [value]})
        return None
    return state["seen"] + [value]


@app.orchestration_trigger(context_name="context")
def rewindable(context: df.DurableOrchestrationContext):
    """work, then an activity that fails on its first run only, then work: rewound after failing."""
    tag = context.get_input()["tag"]
    first = yield context.call_activity("work", {"i": 1, "tag": tag, "sleep": 0})
    second = yield context.call_activity("fails_once", tag)
    third = yield context.call_activity("work", {"i": 3, "tag": tag, "sleep": 0})
    return [first, second, third]


@app.orchestration_trigger(context_name="context")
def rewindable_fan_out(context: df.DurableOrchestrationContext):
    """Two slow works beside an activity that fails at once: the instance fails before they end."""
    tag = context.get_input()["tag"]
    results = yield context.task_all([context.call_activity("work", {"i": i, "tag": tag, "sleep": 1})
                                      for i in range(2)] + [context.call_activity("fails_once", tag)])
    return results


@app.orchestration_trigger(context_name="context")
def rewindable_parent(context: df.DurableOrchestrationContext):
    """work, then `rewindable` as a sub-orchestration: its failure fails this one."""
    tag = context.get_input()["tag"]
    before = yield context.call_activity("work", {"i": 0, "tag": tag, "sleep": 0})
    inner = yield context.call_sub_orchestrator("rewindable", {"tag": tag})
    return [before, inner]


@app.orchestration_trigger(context_name="context")
def broken(context: df.DurableOrchestrationContext):
    yield context.call_activity("double", 1)
    raise ValueError("orchestrator gave up")


@app.orchestration_trigger(context_name="context")
def forever(context: df.DurableOrchestrationContext):
    yield context.wait_for_external_event("never")
    return "unreachable"


@app.orchestration_trigger(context_name="context")
def gated(context: df.DurableOrchestrationContext):
    """Waits for `go`, then runs one activity; its custom status says how far its code got."""
    job = context.get_input()
    context.set_custom_status("waiting")
    value = yield context.wait_for_external_event("go")
    context.set_custom_status("got go")
    result = yield context.call_activity("work", {"i": value, "tag": job["tag"], "sleep": job.get("sleep", 0)})
    context.set_custom_status("done")
    return result


@app.orchestration_trigger(context_name="context")
def catch_failure(context: df.DurableOrchestrationContext):
    """Returns the exception a failed activity raises in the orchestrator, as text."""
    try:
        yield context.call_activity("flaky", {"key": context.get_input(), "fail": 99})
    except Exception as error:
        return str(error)
    return None


@app.orchestration_trigger(context_name="context")
def large_payloads(context: df.DurableOrchestrationContext):
    """Large values every way: input, an activity's result and input, the output."""
    job = context.get_input()
    text = yield context.call_activity("make_text", job["kb"])
    size = yield context.call_activity("text_size", text)
    return {"size": size, "input": len(job["pad"]), "text": text}


@app.orchestration_trigger(context_name="context", orchestration="renamed_flow")
def flow_under_another_name(context: df.DurableOrchestrationContext):
    """Registered as `renamed_flow` (the trigger's name argument), calling `renamed_step`."""
    value = yield context.call_activity("renamed_step", context.get_input())
    return {"value": value, "version": context.version}


# Activities -----------------------------------------------------------------------------
@app.activity_trigger(input_name="x", activity="renamed_step")
def step_under_another_name(x: int) -> int:
    return x + 100



@app.activity_trigger(input_name="job")
def work(job: dict) -> int:
    time.sleep(job["sleep"])
    record("work", f"{job['tag']}:{job['i']}")
    return job["i"] * 10


@app.activity_trigger(input_name="job")
def flaky(job: dict) -> str:
    attempts = record("flaky-" + job["key"], "attempt")
    if attempts <= job["fail"]:
        raise RuntimeError(f"boom {attempts}")
    return f"ok after {attempts}"


@app.activity_trigger(input_name="tag")
def fails_once(tag: str) -> str:
    runs = record("once-" + tag, "run")
    if runs == 1:
        raise RuntimeError("fails on its first run")
    return f"ok on run {runs}"


@app.activity_trigger(input_name="x")
def double(x: int) -> int:
    return 2 * x


@app.activity_trigger(input_name="kb")
def make_text(kb: int) -> str:
    import hashlib
    digest = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(kb * 1024 // 64 + 1))
    return digest[:kb * 1024]


@app.activity_trigger(input_name="text")
def text_size(text: str) -> int:
    return len(text)


# Blob and Event Grid triggers ------------------------------------------------------------
@app.blob_trigger(arg_name="blob", path=BLOB_CONTAINER + "/{name}", connection="AzureWebJobsStorage")
@app.durable_client_input(client_name="client")
async def on_blob(blob: func.InputStream, client: df.DurableOrchestrationClient):
    record("blob", f"{blob.name}:{blob.length}:{len(blob.read())}")
    name = blob.name.split("/", 1)[1]
    if name.startswith("poison"):
        raise ValueError("this blob always fails")
    if name.startswith("slow-"):  # still running when a test stops the host
        await asyncio.sleep(2.0)
    if name.startswith("start-"):  # a blob arrival starting an orchestration, as the real app does
        await client.start_new("fan_out", "blob-" + blob.name.replace("/", "-"), {"n": 2, "tag": name})


@app.blob_trigger(arg_name="client", path=SDK_BLOB_CONTAINER + "/{name}", connection="AzureWebJobsStorage")
def on_sdk_blob(client: sdk_blob.BlobClient):
    """An SDK-typed trigger: a BlobClient, not the content; reads the size and the last 16 bytes."""
    with client:
        size = client.get_blob_properties().size
        tail = client.download_blob(offset=max(size - 16, 0)).readall()
    kind = f"{type(client).__module__}.{type(client).__name__}"
    record("sdkblob", f"{client.container_name}/{client.blob_name}:{kind}:{size}:{tail.hex()}")


@app.event_grid_trigger(arg_name="event")
def on_event(event: func.EventGridEvent):
    kind = getattr(event, "event_type", None) or getattr(event, "type", None)
    record("eventgrid", f"{kind}:{event.subject}:{event.get_json()['n']}")
