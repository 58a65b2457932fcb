"""The Durable HTTP management API: the loopback RPC endpoint the SDK's
DurableOrchestrationClient calls (`rpcBaseUrl`), the public check-status webhooks under
/runtime/webhooks/durabletask (system key), and the durable_client_input binding payload."""
from __future__ import annotations

import heapq
import json
from urllib.parse import quote

from aiohttp import web

from local_emulator.host.durable import continuation
from local_emulator.host.durable import history as h
from local_emulator.host.durable.engine import (
    DurableEngine,
    InstanceExists,
    InvalidInstanceId,
    UnknownOrchestrator,
    WrongState,
)
from local_emulator.host.durable.history_view import public_history
from local_emulator.host.durable.store import ACTIVE, TERMINAL
from local_emulator.host.keys import key_matches, unauthorized

WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"
DEFAULT_PAGE_SIZE = 100  # OrchestrationStatusQueryCondition.PageSize


def _positive_int(text: str | None) -> int | None:
    """An integer query parameter read as int.TryParse does; None if absent, unreadable or < 1."""
    try:
        value = int((text or "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def error_response(status: int, message: str, error: BaseException | None = None,
                   exception_type: str | None = None) -> web.Response:
    """The extension's error body (ASP.NET's HttpError from CreateErrorResponse): Message, and
    for an exception its message and .NET type, so a client that parses JSON can read it."""
    body = {"Message": message}
    if error is not None:
        body.update(ExceptionMessage=str(error), ExceptionType=exception_type or type(error).__name__)
    return web.json_response(body, status=status)


def status_code(runtime_status: str, failure_is_500: bool) -> int:
    """The check-status answer as HttpApiHandler gives it: 202 while the instance runs, 200 once
    it has ended however it ended, except 500 for Failed when the caller asked for it."""
    if runtime_status in ACTIVE:
        return 202
    if runtime_status == "Failed" and failure_is_500:
        return 500
    return 200


def whole_seconds(timestamp: str) -> str:
    """Status timestamps as the extension writes them (.NET "s" format plus Z): no fraction."""
    return h.parse_iso(timestamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flag(request: web.Request, name: str, default: bool) -> bool:
    """A boolean query parameter read as .NET's bool.TryParse does (anything else: the default)."""
    value = request.query.get(name, "").strip().lower()
    return {"true": True, "false": False}.get(value, default)


def _moment(request: web.Request, name: str):
    """A date-time query parameter (UTC unless it says otherwise); None if absent or unreadable."""
    try:
        return h.parse_iso(request.query[name]) if request.query.get(name) else None
    except ValueError:
        return None


class DurableApi:
    def __init__(self, engine: DurableEngine, system_key: str):
        self.engine = engine
        self.system_key = system_key
        self.public_url = ""  # set once the HTTP port is known
        self.rpc_url = ""

    # binding payload ---------------------------------------------------------------------
    @property
    def _code(self) -> str:
        """The system key as a query parameter (Azure-style keys may hold '+', '/' or '=')."""
        return "code=" + quote(self.system_key, safe="")

    def management_urls(self, instance_id: str) -> dict:
        base = f"{self.public_url}{WEBHOOK_PREFIX}/instances/{quote(instance_id, safe='')}"
        query = f"taskHub={self.engine.store.hub}&connection=Storage&{self._code}"
        return {"id": instance_id, "statusQueryGetUri": f"{base}?{query}",
                "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{base}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{base}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{base}?{query}",
                "restartPostUri": f"{base}/restart?{query}",
                "suspendPostUri": f"{base}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{base}/resume?reason={{text}}&{query}"}

    def client_binding(self) -> str:
        """The JSON string the durable_client_input binding receives."""
        base, code = f"{self.public_url}{WEBHOOK_PREFIX}", self._code
        return json.dumps({
            "taskHubName": self.engine.store.hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?{code}",
                "createAndWaitOnNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{code}"},
            "managementUrls": self.management_urls("INSTANCEID"),
            "baseUrl": base, "requiredQueryStringParameters": code,
            "rpcBaseUrl": f"{self.rpc_url}/durabletask/", "httpBaseUrl": "",
        })

    # routes ------------------------------------------------------------------------------
    def add_rpc_routes(self, app: web.Application) -> None:
        """Loopback-only RPC port: the SDK client sends no key (as with the real host)."""
        self._add(app, "/durabletask", client_encoded=True)

    def add_public_routes(self, app: web.Application) -> None:
        self._add(app, WEBHOOK_PREFIX, client_encoded=False, guarded=True)

    def _add(self, app: web.Application, prefix: str, client_encoded: bool, guarded: bool = False) -> None:
        def route(handler):
            async def wrapped(request: web.Request):
                if guarded and not key_matches(request, self.system_key):
                    return unauthorized()
                return await handler(request, client_encoded)
            return wrapped
        app.router.add_post(prefix + "/orchestrators/{name}", route(self.start))
        app.router.add_post(prefix + "/orchestrators/{name}/{instance_id}", route(self.start))
        app.router.add_get(prefix + "/instances/", route(self.query))
        app.router.add_get(prefix + "/instances", route(self.query))
        app.router.add_delete(prefix + "/instances/", route(self.purge_many))
        app.router.add_get(prefix + "/instances/{instance_id}", route(self.status))
        app.router.add_delete(prefix + "/instances/{instance_id}", route(self.purge))
        app.router.add_post(prefix + "/instances/{instance_id}/raiseEvent/{event}", route(self.raise_event))
        app.router.add_post(prefix + "/instances/{instance_id}/terminate", route(self.terminate))
        app.router.add_post(prefix + "/instances/{instance_id}/suspend", route(self.suspend))
        app.router.add_post(prefix + "/instances/{instance_id}/resume", route(self.resume))
        app.router.add_post(prefix + "/instances/{instance_id}/restart", route(self.restart))
        app.router.add_post(prefix + "/instances/{instance_id}/rewind", route(self.rewind))

    @staticmethod
    async def _input(request: web.Request, client_encoded: bool) -> str | None:
        """The serialized input: the SDK client posts it JSON-encoded once more (json=str)."""
        text = (await request.text()).strip()
        if not text or text == "null":
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": "body is not JSON"}),
                                     content_type="application/json")
        if client_encoded and isinstance(value, str):
            return value
        return text

    async def start(self, request: web.Request, client_encoded: bool) -> web.Response:
        name = request.match_info["name"]
        try:
            input_json = await self._input(request, client_encoded)
            instance_id = await self.engine.start_instance(name, request.match_info.get("instance_id"), input_json,
                                                           version=request.query.get("version"))
        except (UnknownOrchestrator, InvalidInstanceId) as refused:
            return web.json_response({"Message": "One or more of the arguments submitted is incorrect",
                                      "ExceptionMessage": str(refused)}, status=400)
        except InstanceExists as exists:
            return web.json_response({"Message": str(exists), "ExceptionMessage": str(exists)}, status=409)
        return self._check_status_response(instance_id)

    def _check_status_response(self, instance_id: str) -> web.Response:
        """CreateCheckStatusResponse: 202, the management URLs, Location and Retry-After."""
        payload = self.management_urls(instance_id)
        return web.json_response(payload, status=202, headers={"Location": payload["statusQueryGetUri"],
                                                               "Retry-After": "10"})

    def _status_body(self, instance_id: str, state: dict, history: list | None, show_input: bool,
                     show_output: bool = False) -> dict:
        body = {"name": state["Name"], "instanceId": instance_id, "runtimeStatus": state["RuntimeStatus"],
                "input": json.loads(state["Input"]) if show_input and state.get("Input") else None,
                "customStatus": state.get("CustomStatus"), "output": state.get("Output"),
                "createdTime": whole_seconds(state["CreatedTime"]),
                "lastUpdatedTime": whole_seconds(state["LastUpdatedTime"])}
        if history is not None and state["RuntimeStatus"] != "Pending":  # as the extension: none while Pending
            body["historyEvents"] = public_history(history, show_input, show_output)
        return body

    async def status(self, request: web.Request, client_encoded: bool) -> web.Response:
        instance_id = request.match_info["instance_id"]
        show_history = _flag(request, "showHistory", False)
        show_input = _flag(request, "showInput", True)
        engine_store = self.engine.store
        instance = await (engine_store.load(instance_id) if show_history else engine_store.load_state(instance_id))
        if instance is None:
            return web.json_response(None, status=404)
        body = self._status_body(instance_id, instance.state, instance.history if show_history else None,
                                 show_input, _flag(request, "showHistoryOutput", False))
        code = status_code(instance.status, _flag(request, "returnInternalServerErrorOnFailure", False))
        # as HttpApiHandler: a 202 points back at this request and asks the poller to wait 5 s
        headers = {"Location": str(request.url), "Retry-After": "5"} if code == 202 else {}
        return web.json_response(body, status=code, headers=headers)

    async def query(self, request: web.Request, client_encoded: bool) -> web.Response:
        """A page of instances in instance-id order: `top` of them (100 unless given, as the
        extension's default page size) after the one the `x-ms-continuation-token` request
        header names; the response's header names the next page's start (empty on the last)."""
        wanted = {s for s in request.query.get("runtimeStatus", "").split(",") if s}
        prefix = request.query.get("instanceIdPrefix", "")
        try:
            created_from, created_to = (h.parse_iso(request.query[name]) if request.query.get(name) else None
                                        for name in ("createdTimeFrom", "createdTimeTo"))
        except ValueError:
            return web.json_response({"error": "createdTimeFrom/createdTimeTo must be ISO 8601"}, status=400)
        page_size = _positive_int(request.query.get("top")) or DEFAULT_PAGE_SIZE
        try:
            after = continuation.decode(request.headers.get(continuation.HEADER, ""))
        except ValueError as bad:
            return error_response(400, "The continuation token is not valid.", bad, "System.ArgumentException")
        matching = []
        async for instance_id, state in self.engine.store.iter_states(wanted, prefix, after):
            if wanted and state["RuntimeStatus"] not in wanted or not instance_id.startswith(prefix):
                continue
            created = h.parse_iso(state["CreatedTime"])
            if created_from and created < created_from or created_to and created > created_to:
                continue
            matching.append((instance_id, state))
        page = heapq.nsmallest(page_size + 1, matching, key=lambda item: item[0])
        more = len(page) > page_size
        page = page[:page_size]
        token = continuation.encode(page[-1][0]) if more else ""
        show_input = _flag(request, "showInput", True)
        return web.json_response([self._status_body(instance_id, state, None, show_input)
                                  for instance_id, state in page],
                                 headers={continuation.HEADER: token})

    async def purge(self, request: web.Request, client_encoded: bool) -> web.Response:
        instance_id = request.match_info["instance_id"]
        instance = await self.engine.store.load_state(instance_id)
        if instance is None:
            return web.json_response(None, status=404)
        if instance.status not in TERMINAL:
            return web.json_response(f"Only orchestrations in a terminal state can be purged, but the orchestration "
                                     f"with instance ID {instance_id} has status {instance.status}", status=412)
        self.engine.cache.pop(instance_id, None)
        deleted = await self.engine.store.purge(instance_id)
        return web.json_response({"instancesDeleted": deleted})

    async def purge_many(self, request: web.Request, client_encoded: bool) -> web.Response:
        """Purge by filter as the extension with the Azure Storage provider: createdTimeFrom is
        required, createdTimeTo defaults to now (both inclusive); runtimeStatus keeps only its
        terminal statuses, and without it every instance created in the window goes. (A list
        naming no terminal status makes Azure Storage drop the filter and purge everything in
        the window; here it purges nothing.) 404 when nothing was deleted."""
        created_from = _moment(request, "createdTimeFrom")
        if created_from is None:
            return web.json_response("Please provide value for 'createdTimeFrom' parameter.", status=400)
        created_to = _moment(request, "createdTimeTo") or h.utc_now()
        named = {s.strip() for s in request.query.get("runtimeStatus", "").split(",") if s.strip()}
        wanted = (named & set(TERMINAL)) if named else None
        deleted = 0
        for instance_id, state in await self.engine.store.query_states_with_ids(wanted):
            if wanted is not None and state["RuntimeStatus"] not in wanted:
                continue
            if not created_from <= h.parse_iso(state["CreatedTime"]) <= created_to:
                continue
            self.engine.cache.pop(instance_id, None)
            deleted += await self.engine.store.purge(instance_id)
        if not deleted:
            return web.json_response(None, status=404)
        return web.json_response({"instancesDeleted": deleted})

    async def raise_event(self, request: web.Request, client_encoded: bool) -> web.Response:
        input_json = await self._input(request, client_encoded)
        code = await self.engine.raise_event(request.match_info["instance_id"], request.match_info["event"],
                                             input_json)
        return web.json_response(None, status=code)

    async def terminate(self, request: web.Request, client_encoded: bool) -> web.Response:
        code = await self.engine.terminate(request.match_info["instance_id"], request.query.get("reason", ""))
        return web.json_response(None, status=code)

    async def suspend(self, request: web.Request, client_encoded: bool) -> web.Response:
        """202, 404 unknown, 410 finished; suspending a suspended instance is the extension's
        InvalidOperationException, which its HTTP API answers 500."""
        return await self._suspension(self.engine.suspend, request)

    async def resume(self, request: web.Request, client_encoded: bool) -> web.Response:
        """As suspend; resuming an instance that is not suspended answers 500."""
        return await self._suspension(self.engine.resume, request)

    @staticmethod
    async def _suspension(operation, request: web.Request) -> web.Response:
        try:
            code = await operation(request.match_info["instance_id"], request.query.get("reason"))
        except WrongState as refused:
            return error_response(500, "Something went wrong while processing your request", refused,
                                  "System.InvalidOperationException")
        return web.json_response(None, status=code)

    async def restart(self, request: web.Request, client_encoded: bool) -> web.Response:
        """RestartAsync: the instance's orchestrator started again with its original input,
        under a new id (the default) or, with restartWithNewInstanceId=false, under the same id
        once it has finished (409 while it is pending, running or suspended); 400 for an unknown
        instance. Answers as a start does (202 and the new instance's management URLs)."""
        instance_id = request.match_info["instance_id"]
        instance = await self.engine.store.load_state(instance_id)
        bad_id = "InstanceId does not match a valid orchestration instance."
        if instance is None:
            return error_response(400, bad_id, LookupError(f"An orchestration with the instanceId {instance_id} "
                                                           f"was not found."), "System.ArgumentException")
        new_id = None if _flag(request, "restartWithNewInstanceId", True) else instance_id
        try:
            started = await self.engine.start_instance(instance.state["Name"], new_id, instance.state.get("Input"))
        except (UnknownOrchestrator, InvalidInstanceId) as refused:
            return error_response(400, bad_id, refused, "System.ArgumentException")
        except InstanceExists as exists:
            return error_response(409, "A non-terminal instance with this instance ID already exists.", exists,
                                  "DurableTask.Core.Exceptions.OrchestrationAlreadyExistsException")
        return self._check_status_response(started)

    async def rewind(self, request: web.Request, client_encoded: bool) -> web.Response:
        """As HttpApiHandler: 404 unknown, 410 Completed or Terminated, 500 (the client's
        InvalidOperationException) for an instance that is not Failed, else 202 (rewind.py)."""
        try:
            code = await self.engine.rewind(request.match_info["instance_id"], request.query.get("reason", ""))
        except WrongState as refused:
            return error_response(500, "Something went wrong while processing your request", refused,
                                  "System.InvalidOperationException")
        return web.json_response(None, status=code)
