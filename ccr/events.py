"""`ccr events`: have Event Grid call your https webhook when a run of one of your contracts
finishes (`CCR.Run.Finished`). The clean room makes the subscription and fixes its subject
filter to your own runs (`/parties/<sha256 of your DID>/runs/<run id>`); your webhook must
answer Event Grid's validation handshake (echo `data.validationCode` as
`{"validationResponse": ...}`, or GET `data.validationUrl` within 10 minutes).

  ccr events subscribe --webhook https://... [--name NAME] [--run-id RUN_ID]
  ccr events list
  ccr events unsubscribe --name NAME
"""
from __future__ import annotations

import argparse

from ccr.common import CliError, emit
from ccr.party import add_identity_arguments, clean_room

NAME = "events"
HELP = "events: subscribe a webhook to your runs' events"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subscribe = commands.add_parser("subscribe", help="subscribe an https webhook to CCR.Run.Finished of your runs")
    subscribe.add_argument("--webhook", required=True, help="https URL that answers the validation handshake")
    subscribe.add_argument("--name", default="runs", help="your name for the subscription (default: runs)")
    subscribe.add_argument("--run-id", help="only this run's events")
    subscribe.set_defaults(func=events_subscribe)
    listing = commands.add_parser("list", help="your subscriptions")
    listing.set_defaults(func=events_list)
    unsubscribe = commands.add_parser("unsubscribe", help="delete one of your subscriptions")
    unsubscribe.add_argument("--name", default="runs")
    unsubscribe.set_defaults(func=events_unsubscribe)
    for command in (subscribe, listing, unsubscribe):
        command.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")
        add_identity_arguments(command)


def _answer(response, doing: str):
    if response.status_code == 204:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not response.ok:
        raise CliError(f"{doing}: the clean room answered HTTP {response.status_code}: {body.get('error', '')}")
    return body


def events_subscribe(args) -> None:
    body = {"name": args.name, "webhook": args.webhook, **({"run_id": args.run_id} if args.run_id else {})}
    emit(_answer(clean_room(args, required=True).request("POST", "subscriptions", json=body), "subscribe"))


def events_list(args) -> None:
    emit(_answer(clean_room(args, required=True).request("GET", "subscriptions"), "list subscriptions"))


def events_unsubscribe(args) -> None:
    _answer(clean_room(args, required=True).request("DELETE", f"subscriptions/{args.name}"), "unsubscribe")
    emit({"deleted": args.name})
