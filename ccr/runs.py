"""`ccr runs`: what the clean room tells the parties about runs, from the status API
(`GET /api/runs`, `GET /api/runs/{run_id}`, function-key authenticated).

  ccr runs list
  ccr runs show RUN_ID
"""
from __future__ import annotations

import argparse

import requests

from ccr.common import CliError, emit
from shared import settings

NAME = "runs"
HELP = "runs: list, show"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="every run, newest first")
    listing.set_defaults(func=run_list)
    show = commands.add_parser("show", help="one run: phases with timestamps, outcome, output, budget spent")
    show.add_argument("run_id")
    show.set_defaults(func=run_show)
    for command in (listing, show):
        command.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")


def _get(args, path: str):
    base = args.url or settings.get("CCR_FUNCTIONS_URL")
    key = settings.get("CCR_FUNCTION_KEY")
    if not base:
        raise CliError("no Functions app: pass --url or set CCR_FUNCTIONS_URL")
    if not key:
        raise CliError("no function key: set CCR_FUNCTION_KEY")
    try:
        response = requests.get(f"{base.rstrip('/')}/api/{path}", headers={"x-functions-key": key}, timeout=30)
    except requests.RequestException as error:
        raise CliError(f"cannot reach {base} ({type(error).__name__})") from None
    if response.status_code == 401:
        raise CliError("the Functions app refused the function key (HTTP 401)")
    if response.status_code == 404 and path.startswith("runs/"):
        raise CliError(f"no such run: {path.rsplit('/', 1)[-1]}")
    if not response.ok:
        raise CliError(f"status API answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise CliError("status API answered something that is not JSON") from None


def run_list(args) -> None:
    emit({"runs": _get(args, "runs")})


def run_show(args) -> None:
    if not args.run_id.startswith("run-") or "/" in args.run_id:
        raise CliError("RUN_ID looks like run-<16 hex digits>")
    emit(_get(args, f"runs/{args.run_id}"))
