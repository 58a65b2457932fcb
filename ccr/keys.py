"""`ccr keys`: inspect what a grant will do - `policy` prints the secure key release policy of
a contract's key-encryption keys and the host data it pins (that contract's trainer group)."""
from __future__ import annotations

import json
from pathlib import Path

from ccr.common import CliError, authority, contract_policy, emit

NAME = "keys"
HELP = "keys: policy"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    policy = commands.add_parser("policy", help="print the release policy of a contract's key-encryption keys",
                                 description="Print the SKR release policy (Azure Key Vault grammar) your grants "
                                             "for this contract carry: it pins the host data of the contract's "
                                             "trainer group, whose CCE policy requires the contract's digest.")
    policy.add_argument("--contract", type=Path, required=True, help="the contract payload (JSON)")
    policy.add_argument("--authority", metavar="URL",
                        help="attestation authority trusted by the policy (default: setting CCR_MAA_URL)")
    policy.set_defaults(func=run_policy)


def run_policy(args) -> None:
    from shared import contract as contracts
    try:
        payload = contracts.validate_payload(json.loads(args.contract.read_text()))
    except OSError as error:
        raise CliError(f"--contract: cannot read {args.contract} ({error.strerror})") from None
    except ValueError as error:
        raise CliError(f"--contract: {error}") from None
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    emit({"contract_digest": digest, "policy": contract_policy(authority(args), payload, digest)})
