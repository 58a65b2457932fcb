"""`ccr page`: the live run page of your contracts and runs, in your browser. It proves your DID
(a challenge signed with your key, ccr/party.py), asks the clean room for a one-time sign-in
link (valid 60 s, usable once) and opens it; the page then keeps a 15-minute session cookie and
refreshes itself. With --no-browser the link is printed instead (it is a one-time secret).

  ccr page [--no-browser] --did DID --key KEY.pem
"""
from __future__ import annotations

import argparse

from ccr.common import CliError, emit
from ccr.party import add_identity_arguments, clean_room

NAME = "page"
HELP = "page: open the live run page in your browser"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-browser", action="store_true", help="print the one-time link instead of opening it")
    parser.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")
    add_identity_arguments(parser)
    parser.set_defaults(func=open_page)


def open_page(args) -> None:
    response = clean_room(args, required=True).request("POST", "page/link", json={})
    if not response.ok:
        raise CliError(f"the clean room refused a sign-in link (HTTP {response.status_code})")
    link = response.json()
    if not args.no_browser:
        import webbrowser
        if webbrowser.open(link["url"]):
            emit({"opened": True, "expires_in": link["expires_in"]})
            return
    emit({"url": link["url"], "expires_in": link["expires_in"]})
