"""`ccr`, the parties' command-line tool. Each command group is a module in this package with
NAME, HELP and register(subparsers); add a group by adding its module name to GROUPS.

Building the parser imports only the group modules, which import what a command needs when it
runs: `ccr --help` stays fast (tests/parties/test_cli_conventions.py checks no Azure SDK,
HTTP or crypto library is loaded for it).

Every command takes `--output json|table|tsv` and `--query JMESPATH` (ccr/output.py), before
or after its own arguments. User errors (bad arguments, bad files, refused packages, services
that refuse or cannot be reached) print one line on stderr and exit 1 (argparse usage errors
exit 2); no traceback."""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from ccr.common import CliError
from ccr.output import FORMATS, chosen

GROUPS = ["ccr.tdp", "ccr.tdc", "ccr.infer", "ccr.keys", "ccr.contract", "ccr.runs", "ccr.events", "ccr.page", "ccr.profile",
          "ccr.completion"]
# urllib3 quotes the request URL in connection errors; with a SAS connection string it holds sig=
_SAS_SIGNATURE = re.compile(r"(?i)\b(sig=)[^&\s'\"]+")


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version
        try:
            number = version("ccr-orchestrator")
        except PackageNotFoundError:
            number = "unknown (not installed: pip install -e .)"
        print(f"ccr {number} (Python {sys.version.split()[0]})")
        parser.exit()


def _output_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--output/--query on the top parser (with defaults) and again on every command (without,
    so a value given after the command wins and one given before is kept)."""
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--output", "-o", dest="output_format", choices=FORMATS,
                        help="output format: json (default), table or tsv", **({"default": "json"} if top else default))
    parser.add_argument("--query", dest="output_query", metavar="JMESPATH", help="JMESPath query applied to the result "
                        "(https://jmespath.org), e.g. \"runs[?status=='failed'].run_id\"",
                        **({"default": None} if top else default))


def _leaves(parser: argparse.ArgumentParser):
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield parser
    for action in children:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaves(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccr", description="Confidential clean-room training: the parties' tool. Endpoints come from the "
        "environment (CCR_* settings); with CCR_LOCAL_PROFILE=1, missing ones from the local stack's "
        "endpoints file (`ccr profile` shows which are used and why). A user guide: docs/GUIDE.md.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    _output_options(parser, top=True)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name in GROUPS:
        importlib.import_module(name).register(groups)
    for leaf in _leaves(parser):
        if leaf is not parser:
            _output_options(leaf, top=False)
    return parser


def _user_error(error: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (which keeps its traceback)."""
    from ccr.output import QueryError
    if isinstance(error, (CliError, QueryError)):
        return str(error)
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    from shared.deid import DeidError
    from shared.package import PackageError
    from shared.settings import MissingSettings
    if isinstance(error, (DeidError, PackageError)):
        return f"{type(error).__name__}: {error}" if isinstance(error, PackageError) else str(error)
    if isinstance(error, MissingSettings):
        return (f"{error}; set them in the environment, or use the local stack's with CCR_LOCAL_PROFILE=1 "
                "(`ccr profile` shows what is used)")
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
    chosen.update(output=args.output_format, query=args.output_query)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("ccr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ccr ... | head`: the reader has what it wanted
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 0
    except Exception as error:
        message = _user_error(error)
        if message is None:
            raise
        print(f"ccr: error: {message}", file=sys.stderr)
        return 1
    finally:
        from ccr.profile import note_local_settings
        note_local_settings()
    return 0


if __name__ == "__main__":
    sys.exit(main())
