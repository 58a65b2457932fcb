"""`ccr runs`: what the clean room tells a party about the runs of its contracts, from the
status API (`GET /api/runs`, `GET /api/runs/{run_id}`), as that party: it proves its DID with
its key (ccr/party.py) and sees only the runs of contracts it is a party of.

  ccr runs list --did DID --key KEY.pem
  ccr runs show RUN_ID --did DID --key KEY.pem
  ccr runs watch RUN_ID [--timeout S]     a line per phase change on stderr until the run ends;
                                          then the run; exit 1 if it failed (with the reason)

A run's status is `pending` (admitted), `running` (from its first phase), then `succeeded` or
`failed`; its phase is one of admitted, waiting_for_previous_model (a continued run), validating,
gathering_key_grants, reserving_budget, deploying, training, cleaning_up, notifying, finished.
"""
from __future__ import annotations

import argparse
import time

from ccr.common import CliError, emit, step
from ccr.party import add_identity_arguments, clean_room

NAME = "runs"
HELP = "runs: list, show, watch"
TERMINAL = ("succeeded", "failed")


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="the runs of your contracts, newest first")
    listing.set_defaults(func=run_list)
    show = commands.add_parser("show", help="one run: phases with timestamps, outcome, output, budget spent")
    show.add_argument("run_id")
    show.set_defaults(func=run_show)
    watch = commands.add_parser("watch", help="follow a run until it ends (a line per phase change)",
                                description="Poll the run's status until it has succeeded or failed, printing a "
                                            "line on stderr for each phase it enters (also before it starts: a "
                                            "contract waiting for inputs has no run yet); then print the run. "
                                            "Exit status 1 if it failed.")
    watch.add_argument("run_id")
    add_wait_arguments(watch)
    watch.set_defaults(func=run_watch)
    for command in (listing, show, watch):
        command.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")
        add_identity_arguments(command)


def add_wait_arguments(parser) -> None:
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default 3600)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")


def _get(args, path: str, missing_ok: bool = False):
    response = clean_room(args, required=True).request("GET", path)
    if response.status_code == 401:
        raise CliError(f"the clean room refused your access token (HTTP 401): {_reason(response)}")
    if response.status_code == 404 and path.startswith("runs/"):
        if missing_ok:
            return None
        raise CliError(f"no such run: {path.rsplit('/', 1)[-1]} (not started yet, or not of a contract of yours: "
                       "`ccr contract status` says what it waits for)")
    if not response.ok:
        raise CliError(f"status API answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise CliError("status API answered something that is not JSON") from None


def _reason(response) -> str:
    try:
        return str(response.json().get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""


def check_run_id(run_id: str) -> str:
    if not run_id.startswith("run-") or "/" in run_id or len(run_id) > 100:
        raise CliError("RUN_ID looks like run-<16 hex digits> (`ccr contract submit` prints it)")
    return run_id


def run_list(args) -> None:
    emit({"runs": _get(args, "runs")})


def run_show(args) -> None:
    emit(_get(args, f"runs/{check_run_id(args.run_id)}"))


def wait_for_run(args, run_id: str) -> dict:
    """Poll until the run is finished (status succeeded or failed); a line per phase change."""
    deadline = time.monotonic() + args.timeout
    seen = None
    while True:
        record = _get(args, f"runs/{run_id}", missing_ok=True)
        state = (record.get("status"), record.get("phase")) if record else ("not started", None)
        if state != seen:
            seen = state
            step(f"{run_id}: " + (f"{state[1]} ({state[0]})" if record else
                                  "no run yet: the contract is not accepted or waits for inputs"))
        if record and record.get("status") in TERMINAL and record.get("phase") == "finished":
            return record
        if time.monotonic() + args.interval > deadline:
            raise CliError(f"{run_id} has not finished after {args.timeout:g} s (last: "
                           f"{state[1] or state[0]}); watch it again with `ccr runs watch {run_id}`")
        time.sleep(args.interval)


def failure(record: dict) -> str:
    return (f"run {record.get('run_id')} failed in phase {record.get('failed_phase') or record.get('phase')}: "
            f"{record.get('reason') or 'no reason recorded'}")


def run_watch(args) -> None:
    record = wait_for_run(args, check_run_id(args.run_id))
    emit(record)
    if record.get("status") != "succeeded":
        raise CliError(failure(record))
