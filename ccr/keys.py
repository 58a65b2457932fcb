"""`ccr keys`: inspect what the key commands will do - `policy` prints the secure key release
policy a data, model or output key is imported with."""
from __future__ import annotations

from ccr.common import add_policy_arguments, emit, release_policy

NAME = "keys"
HELP = "keys: policy"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    policy = commands.add_parser("policy", help="print the release policy keys are imported with",
                                 description="Print the SKR release policy (Azure Key Vault grammar) pinned to the "
                                             "trainer's CCE policy hash.")
    add_policy_arguments(policy)
    policy.set_defaults(func=run_policy)


def run_policy(args) -> None:
    emit(release_policy(args))
