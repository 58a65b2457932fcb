"""`ccr runs`: what the clean room tells a party about the runs of its contracts, from the
status API (`GET /api/runs`, `GET /api/runs/{run_id}`), as that party: it proves its DID with
its key (ccr/party.py) and sees only the runs of contracts it is a party of.

  ccr runs list --did DID --key KEY.pem
  ccr runs show RUN_ID --did DID --key KEY.pem
"""
from __future__ import annotations

import argparse

from ccr.common import CliError, emit
from ccr.party import add_identity_arguments, clean_room

NAME = "runs"
HELP = "runs: list, show"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="the runs of your contracts, newest first")
    listing.set_defaults(func=run_list)
    show = commands.add_parser("show", help="one run: phases with timestamps, outcome, output, budget spent")
    show.add_argument("run_id")
    show.set_defaults(func=run_show)
    for command in (listing, show):
        command.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")
        add_identity_arguments(command)


def _get(args, path: str):
    response = clean_room(args, required=True).request("GET", path)
    if response.status_code == 401:
        raise CliError(f"the clean room refused your access token (HTTP 401): {_reason(response)}")
    if response.status_code == 404 and path.startswith("runs/"):
        raise CliError(f"no such run: {path.rsplit('/', 1)[-1]}")
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


def run_list(args) -> None:
    emit({"runs": _get(args, "runs")})


def run_show(args) -> None:
    if not args.run_id.startswith("run-") or "/" in args.run_id:
        raise CliError("RUN_ID looks like run-<16 hex digits>")
    emit(_get(args, f"runs/{args.run_id}"))
