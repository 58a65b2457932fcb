"""`ccr tdp`: what a Training Data Provider runs on its own machine - de-identify a table
(`prepare`), make the pseudonym key its contract's providers share (`pseudonym-key`), and
encrypt, upload and key a prepared table (`publish`), declare its lifetime privacy budget
once (`declare-budget`) and each new version of a dataset (`declare-version`), and check a TDC's proposed feature bounds against its own table
(`check-bounds`). The file formats: docs/GUIDE.md."""
from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path

from ccr.common import CliError, emit, keys_dir, load_local_key, new_key_id, plain_name, save_local_key, step, upload
from ccr.ledger import call, ledger_url, reason
from ccr.party import add_identity_arguments, clean_room, party_did
from ccr.party import identity as party_identity

NAME = "tdp"
HELP = "training data provider: prepare, pseudonym-key, publish, declare-budget, declare-version, check-bounds"
PSEUDONYM_KEY_ENV = "CCR_PSEUDONYM_KEY"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prepare = commands.add_parser("prepare", help="de-identify a CSV with a preparation config",
                                  description="De-identify a CSV: drop direct identifiers, replace join "
                                              "identifiers by keyed pseudonyms, coerce types. The config's grammar "
                                              "(pseudonymize, drop, keep, rename, prefix, types): docs/GUIDE.md.")
    prepare.add_argument("--config", required=True, type=Path, help="preparation config (JSON)")
    prepare.add_argument("--input", required=True, type=Path, help="raw CSV")
    prepare.add_argument("--out", dest="output", required=True, type=Path, help="prepared CSV to write")
    prepare.add_argument("--pseudonym-key-file", type=Path,
                         help=f"file with the contract's shared pseudonym key (hex); default: ${PSEUDONYM_KEY_ENV}")
    prepare.set_defaults(func=run_prepare)

    make_key = commands.add_parser("pseudonym-key", help="write a new pseudonym key to share with the other providers")
    make_key.add_argument("--out", dest="output", required=True, type=Path, help="key file to create (0600; never overwritten)")
    make_key.set_defaults(func=run_pseudonym_key)

    publish = commands.add_parser("publish", help="encrypt a prepared table under a new data key and upload it",
                                  description="Encrypt a prepared table under a fresh data key, keep the key in "
                                              "your keys dir (0600) and upload the package. Prints the blob, "
                                              "manifest's blake3 digest and key id for the contract; never the key. The key "
                                              "reaches the clean room only through a grant made when you sign a "
                                              "contract (`ccr contract sign`), and one upload serves any number of "
                                              "contracts. The blob lives under your party name "
                                              "(datasets/<name>/...); with your key and CCR_FUNCTIONS_URL the "
                                              "upload goes through a create-only SAS the clean room issues for "
                                              "that blob alone.")
    publish.add_argument("--input", required=True, type=Path, help="prepared CSV")
    publish.add_argument("--dataset", required=True, help="dataset name (e.g. icmr): names the blob and the key")
    publish.add_argument("--keys-dir", type=Path, help="where the data key is kept (default: $CCR_KEYS_DIR or "
                                                       "~/.ccr/keys)")
    publish.add_argument("--version", type=int, default=None,
                         help="publish a later version (>= 2) of the dataset, encrypted under the data key you "
                              "already granted (--data-key-id); declare it with `ccr tdp declare-version`")
    publish.add_argument("--data-key-id", dest="data_key_id",
                         help="with --version: the dataset's granted data key id (as its first publish printed)")
    publish.add_argument("--declare", action="store_true",
                         help="with --version: declare it on the ledger (as `ccr tdp declare-version`) before the "
                              "upload, so its arrival can start a continued run")
    publish.add_argument("--new-individuals", action="store_true",
                         help="with --declare: its rows are people the dataset never held (a population of its own)")
    publish.add_argument("--ledger", help="with --declare: ledger URL (default: setting CCR_LEDGER_URL)")
    add_identity_arguments(publish, "your did:web: its name names the blob (default: setting CCR_PARTY_DID)")
    publish.set_defaults(func=run_publish)

    declare = commands.add_parser("declare-budget", help="declare a dataset's lifetime privacy budget, once",
                                  description="Sign, with your DID key, the (epsilon, delta) your dataset's people "
                                              "may ever be exposed to across all runs, and record it on the ledger. "
                                              "The ledger keeps the first declaration for your DID and that "
                                              "dataset name and refuses another; contracts carry it and every "
                                              "run is charged against it (shared/budget_declaration.py).")
    declare.add_argument("--dataset", required=True, help="dataset name, as published")
    declare.add_argument("--epsilon", required=True, type=float, help="lifetime epsilon (> 0)")
    declare.add_argument("--delta", required=True, type=float, help="lifetime delta, in (0, 1)")
    declare.add_argument("--ledger", help="ledger URL (default: setting CCR_LEDGER_URL)")
    add_identity_arguments(declare, "your did:web (default: setting CCR_PARTY_DID)")
    declare.set_defaults(func=run_declare_budget)

    version = commands.add_parser("declare-version", help="declare a published package as a new version of a dataset",
                                  description="Sign, with your DID key, that a package you published (its manifest "
                                              "digest, as `ccr tdp publish` printed it) is a new version of your "
                                              "dataset, and record it on the ledger. Versions strictly increase and "
                                              "a package is declared once. Without --new-individuals its rows are "
                                              "the same people as before and a run on it adds to their spent budget; "
                                              "with it they are new people with their own lifetime budget "
                                              "(shared/version_declaration.py, shared/version_budget.py).")
    version.add_argument("--dataset", required=True, help="dataset name, as published and budgeted")
    version.add_argument("--version", dest="number", required=True, type=int, help="version number (above the last)")
    digest = version.add_mutually_exclusive_group(required=True)
    digest.add_argument("--blake3", help="the package's manifest digest (version-2 packages, what publish prints)")
    digest.add_argument("--sha256", help="the package's manifest digest (version-1 packages)")
    version.add_argument("--new-individuals", action="store_true",
                         help="its rows are people this dataset never held (default: the same people again)")
    version.add_argument("--ledger", help="ledger URL (default: setting CCR_LEDGER_URL)")
    add_identity_arguments(version, "your did:web (default: setting CCR_PARTY_DID)")
    version.set_defaults(func=run_declare_version)

    bounds = commands.add_parser("check-bounds", help="warn when proposed feature bounds look derived from your data",
                                 description="Check the public feature bounds a TDC proposes (its training config's "
                                             "feature_bounds, or a JSON object column -> [low, high]) against your "
                                             "own prepared table, on your machine: warns when a bound equals the "
                                             "table's observed minimum or maximum (it looks derived from the data, "
                                             "which reveals an extreme person's value) and notes values the bounds "
                                             "would clip. Exit status 1 with --strict when there is a warning.")
    bounds.add_argument("--input", required=True, type=Path, help="your prepared CSV")
    bounds.add_argument("--training", required=True, type=Path,
                        help="the training config (its feature_bounds) or a JSON object of bounds")
    bounds.add_argument("--strict", action="store_true", help="exit 1 if any bound looks derived or clips values")
    bounds.set_defaults(func=run_check_bounds)


def _pseudonym_key(args) -> bytes:
    from shared import deid
    if args.pseudonym_key_file:
        try:
            text = args.pseudonym_key_file.read_text()
        except OSError as error:
            raise CliError(f"--pseudonym-key-file: cannot read {args.pseudonym_key_file} ({error.strerror})") from None
        return deid.parse_pseudonym_key(text, str(args.pseudonym_key_file))
    if os.environ.get(PSEUDONYM_KEY_ENV):
        return deid.parse_pseudonym_key(os.environ[PSEUDONYM_KEY_ENV], PSEUDONYM_KEY_ENV)
    raise CliError(f"no pseudonym key: pass --pseudonym-key-file or set {PSEUDONYM_KEY_ENV}")


def _writable_destination(path: Path, option: str) -> None:
    if not path.parent.is_dir():
        raise CliError(f"{option}: directory {path.parent} does not exist")
    if path.is_dir():
        raise CliError(f"{option}: {path} is a directory")


def run_prepare(args) -> None:
    from shared import deid
    config = deid.load_config(args.config)
    key = _pseudonym_key(args)
    _writable_destination(args.output, "--out")
    if args.output.resolve() == args.input.resolve():
        raise CliError("--out must differ from --input")
    if not args.input.is_file():
        raise CliError(f"{args.input}: input file not found")
    step(f"prepare {args.input} with {args.config} (dataset {config.dataset}): {len(config.pseudonymize)} "
         f"pseudonymized, {len(config.drop)} dropped, {len(config.keep)} kept column(s)")
    table = deid.prepare_csv(config, args.input, args.output, key)
    step(f"prepared {table.rows} rows into {args.output}")
    emit({"dataset": config.dataset, "rows": table.rows, "output": str(args.output),
          "columns": [c["name"] for c in table.schema["columns"]]})


def run_pseudonym_key(args) -> None:
    from shared import deid
    _writable_destination(args.output, "--out")
    try:
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"--out: {args.output} exists; a pseudonym key is never overwritten") from None
    with os.fdopen(descriptor, "w") as handle:
        handle.write(deid.new_pseudonym_key() + "\n")
    emit({"pseudonym_key_file": str(args.output)})


def csv_schema(path: Path) -> dict:
    """The manifest schema of a prepared table: its column names (no values)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError:
        raise CliError(f"--input: {path} does not exist") from None
    except (csv.Error, UnicodeDecodeError):
        raise CliError(f"--input: {path} is not a CSV file") from None
    if not header:
        raise CliError(f"--input: {path} is empty")
    return {"format": "csv", "columns": header}


def publish_package(source: Path, container: str, owner: str, name: str, directory: Path, content_type: str,
                    schema: dict | None, party=None, version: int | None = None, key_id: str | None = None,
                    before_upload=None) -> dict:
    """Fresh data key (kept in `directory`, 0600) -> package -> blob under the owner's name
    (`storage_names.dataset_blob` / `model_blob`), uploaded through `party`'s SAS if given.
    A later `version` of a dataset reuses its granted data key `key_id` instead
    (`storage_names.dataset_version_blob`). Returns what the contract needs (blob path, the
    manifest's commitment - `blake3` for the version-2 packages written now - and key id)."""
    from shared import package, storage_names
    if version is None:
        key = os.urandom(package.KEY_SIZE)
        key_id = new_key_id(name)
        save_local_key(directory, key_id, key)
        blob = storage_names.model_blob(owner, key_id) if container == storage_names.MODELS else \
            storage_names.dataset_blob(owner, name, key_id)
    else:
        key = load_local_key(directory, key_id)
        blob = storage_names.dataset_version_blob(owner, name, key_id, version)
    with tempfile.TemporaryDirectory(prefix="ccr-publish-") as scratch:
        encrypted = Path(scratch) / "package.ccr"
        step(f"encrypt {source} under a new data key {key_id} (kept in {directory})")
        manifest = package.encrypt_file(source, encrypted, key, key_id, content_type, schema)
        if before_upload is not None:  # e.g. declare the version: its arrival must find the declaration
            before_upload(manifest.pin())
        url = upload(container, blob, encrypted, party)
    return {"blob": f"{container}/{blob}", "url": url, **manifest.pin(), "size": manifest.size,
            "key_id": key_id}


def run_publish(args) -> None:
    from shared import storage_names
    from shared.did import did_name
    if not args.input.is_file():
        raise CliError(f"--input: {args.input} is not a file")
    name = plain_name(args.dataset, "--dataset")
    schema = csv_schema(args.input)
    if (args.version is None) != (args.data_key_id is None) or (args.version is not None and args.version < 2):
        raise CliError("--version (2 or more) and --data-key-id go together: a later version is encrypted under the "
                       "data key already granted")
    if args.declare and args.version is None:
        raise CliError("--declare declares a later version: give --version and --data-key-id")
    declared = {}

    def declare(pin: dict) -> None:
        declared.update(declare_version(args, name, args.version, pin, args.new_individuals))

    owner = did_name(party_did(args, required=True))
    result = publish_package(args.input, storage_names.DATASETS, owner, name, keys_dir(args), "text/csv",
                             schema, clean_room(args), args.version, args.data_key_id, declare if args.declare else None)
    emit({"dataset": name, **result, **({"version": args.version} if args.version else {}),
          **({"declaration_digest": declared["declaration_digest"]} if declared else {})})


def run_declare_budget(args) -> None:
    from shared import budget_declaration
    name = plain_name(args.dataset, "--dataset")
    try:
        token = budget_declaration.declare(party_identity(args, required=True), name, args.epsilon, args.delta)
    except budget_declaration.DeclarationError as error:
        raise CliError(str(error)) from None
    response = call("POST", f"{ledger_url(args)}/budgets", data=token, headers={"Content-Type": "application/jose"})
    if response.status_code not in (200, 201):
        raise CliError(f"ledger refused the declaration (HTTP {response.status_code}): {reason(response)}")
    emit({**budget_declaration.claims(token), "digest": response.json()["digest"],
          "recorded": "new" if response.status_code == 201 else "already recorded"})


def run_declare_version(args) -> None:
    name = plain_name(args.dataset, "--dataset")
    pin = {"blake3": args.blake3} if args.blake3 is not None else {"sha256": args.sha256}
    emit(declare_version(args, name, args.number, pin, args.new_individuals))


def declare_version(args, name: str, number: int, pin: dict, new_individuals: bool) -> dict:
    """Sign the version declaration and record it on the ledger; its claims and digest."""
    from shared import version_declaration as versions
    try:
        token = versions.declare(party_identity(args, required=True), name, number, pin, new_individuals)
    except versions.VersionDeclarationError as error:
        raise CliError(str(error)) from None
    response = call("POST", f"{ledger_url(args)}/versions", data=token, headers={"Content-Type": "application/jose"})
    if response.status_code != 201:
        raise CliError(f"ledger refused the version (HTTP {response.status_code}): {reason(response)}")
    return {**versions.claims(token), "declaration_digest": response.json()["digest"]}


def run_check_bounds(args) -> None:
    import json

    from ccr.bounds import BoundsError, check
    from shared.pipeline import PipelineConfigError, _bounds
    try:
        document = json.loads(args.training.read_text())
    except OSError as error:
        raise CliError(f"--training: cannot read {args.training} ({error.strerror})") from None
    except ValueError:
        raise CliError(f"--training: {args.training} is not JSON") from None
    proposed = document.get("feature_bounds", document) if isinstance(document, dict) else document
    try:
        bounds = _bounds(proposed)
        report = check(args.input, bounds)
    except (PipelineConfigError, BoundsError) as error:
        raise CliError(str(error)) from None
    for warning in report["warnings"]:
        print(f"ccr: warning: {warning}", file=sys.stderr)
    emit(report)
    if args.strict and report["warnings"]:
        raise CliError(f"{len(report['warnings'])} warning(s) about the proposed bounds (see above)")
