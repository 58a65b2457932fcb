"""`ccr`, the parties' command-line tool. Each command group is a module in this package with
NAME, HELP and register(subparsers); add a group by adding its module name to GROUPS.

User errors (bad arguments, bad files, refused packages, services that refuse or cannot be
reached) print one line on stderr and exit 1 (argparse usage errors exit 2); no traceback."""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from ccr.common import CliError

GROUPS = ["ccr.tdp", "ccr.tdc", "ccr.keys", "ccr.contract", "ccr.runs"]
# urllib3 quotes the request URL in connection errors; with a SAS connection string it holds sig=
_SAS_SIGNATURE = re.compile(r"(?i)\b(sig=)[^&\s'\"]+")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccr", description="Confidential clean-room training: the parties' tool. "
                                     "Endpoints come from the environment (CCR_* settings) or the local emulators.")
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name in GROUPS:
        importlib.import_module(name).register(groups)
    return parser


def _user_error(error: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (which keeps its traceback)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    from shared.deid import DeidError
    from shared.package import PackageError
    if isinstance(error, CliError):
        return str(error)
    if isinstance(error, (DeidError, PackageError)):
        return f"{type(error).__name__}: {error}" if isinstance(error, PackageError) else str(error)
    if isinstance(error, HttpResponseError):
        reason = (error.message or "").splitlines()[0] if error.message else error.reason
        return f"service refused the request (HTTP {error.status_code}): {reason}"
    if isinstance(error, ServiceRequestError):
        return "cannot reach the service: " + _SAS_SIGNATURE.sub(r"\1<redacted>", str(error.message))
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("ccr: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = _user_error(error)
        if message is None:
            raise
        print(f"ccr: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
