"""`ccr tdc`: what the Training Data Consumer runs - publish its model package (ONNX graph +
declarative training config) with an output key, and fetch and decrypt a run's output.

The model key and the TDC's output key are generated here and kept locally as 0600 JSON files
`<keys-dir>/<key id>.key.json` ({"key_id", "k": hex}); they reach the clean room only through
the grants `ccr contract sign` makes for a contract the TDC signed (the trainer encrypts the
output with the output key); `fetch` finds the output key by the key id in the output
package's header. keys-dir: --keys-dir, $CCR_KEYS_DIR or ~/.ccr/keys."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from ccr.common import (CliError, download, emit, keys_dir, load_local_key, new_key_id, plain_name, save_local_key,
                        step)
from ccr.party import add_identity_arguments, clean_room, party_did
from ccr.runs import add_wait_arguments
from ccr.tdp import publish_package

NAME = "tdc"
HELP = "training data consumer: publish-model, fetch"
MAX_MODEL_BYTES = 512 << 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same inputs give the same package digest


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    publish = commands.add_parser("publish-model", help="package, encrypt and upload model.onnx + training.json",
                                  description="Zip model.onnx and training.json, encrypt them under a fresh model "
                                              "key, upload, and make a new output key; both keys stay in your keys "
                                              "dir and reach the clean room only through the grants made when you "
                                              "sign a contract.")
    publish.add_argument("--model", required=True, type=Path, help="ONNX model")
    publish.add_argument("--training", required=True, type=Path, help="training config (JSON)")
    publish.add_argument("--keys-dir", type=Path, help="where the model and output keys are kept")
    add_identity_arguments(publish, "your did:web: its name names the blob (default: setting CCR_PARTY_DID)")
    publish.set_defaults(func=run_publish_model)

    fetch = commands.add_parser("fetch", help="download and decrypt a run's output",
                                description="Download outputs/<run-id>/output.ccr (with your identity and "
                                            "CCR_FUNCTIONS_URL, through a read-only SAS the clean room issues to "
                                            "the TDC of that run's contract) and decrypt it with the local copy of "
                                            "the output key named in its header. As a party, the run's status is "
                                            "asked first: a run still going is waited for with --wait, and a "
                                            "failed run's reason is reported.")
    fetch.add_argument("--run-id", required=True, help="run id (from the run status or the CCR.Run.Finished event)")
    fetch.add_argument("--out", dest="output", required=True, type=Path,
                       help="zip to write (model.onnx, metrics.json, privacy.json)")
    fetch.add_argument("--keys-dir", type=Path, help="where publish-model wrote the output key")
    fetch.add_argument("--wait", action="store_true", help="wait for the run to finish first (a line per phase)")
    add_wait_arguments(fetch)
    add_identity_arguments(fetch)
    fetch.set_defaults(func=run_fetch)


def _read_inputs(args) -> tuple[bytes, bytes]:
    import onnx

    from shared.pipeline import PipelineConfigError, TrainingConfig
    for option, path in (("--model", args.model), ("--training", args.training)):
        if not path.is_file():
            raise CliError(f"{option}: {path} is not a file")
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise CliError(f"{option}: {path} is larger than {MAX_MODEL_BYTES >> 20} MiB")
    model = args.model.read_bytes()
    try:
        onnx.checker.check_model(onnx.load_model_from_string(model))
    except Exception:  # onnx raises several unrelated types for a bad file
        raise CliError(f"--model: {args.model} is not a valid ONNX model") from None
    try:
        training = json.loads(args.training.read_text())
        TrainingConfig.from_dict(training)
    except (ValueError, UnicodeDecodeError) as error:
        detail = str(error) if isinstance(error, PipelineConfigError) else "not valid JSON"
        raise CliError(f"--training: {args.training}: {detail}") from None
    return model, json.dumps(training, indent=2, sort_keys=True).encode()


def model_zip(model: bytes, training: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (("model.onnx", model), ("training.json", training)):
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def run_publish_model(args) -> None:
    from shared import package, storage_names
    from shared.did import did_name
    from trainer_container.model_package import CONTENT_TYPE as MODEL_CONTENT_TYPE  # what the trainer reads
    model, training = _read_inputs(args)
    owner = did_name(party_did(args, required=True))
    party = clean_room(args)
    directory = keys_dir(args)
    output_key_id = new_key_id("output")
    key_file = save_local_key(directory, output_key_id, os.urandom(package.KEY_SIZE))
    with tempfile.TemporaryDirectory(prefix="ccr-model-") as scratch:
        archive = Path(scratch) / "model.zip"
        archive.write_bytes(model_zip(model, training))
        result = publish_package(archive, storage_names.MODELS, owner, "model", directory, MODEL_CONTENT_TYPE,
                                 {"members": ["model.onnx", "training.json"]}, party)
    emit({"model": result, "output_key_id": output_key_id, "output_key_file": str(key_file)})


def run_fetch(args) -> None:
    from shared import package, storage_names
    from trainer_container.output_package import CONTENT_TYPE as OUTPUT_CONTENT_TYPE  # what the trainer writes
    run_id = plain_name(args.run_id, "--run-id")
    if not args.output.parent.is_dir():
        raise CliError(f"--out: directory {args.output.parent} does not exist")
    directory = keys_dir(args)
    party = clean_room(args)
    if party is not None:
        _check_finished(args, run_id)
    elif args.wait:
        raise CliError("--wait follows the run through the clean room: set CCR_FUNCTIONS_URL and your identity")
    with tempfile.TemporaryDirectory(prefix="ccr-fetch-") as scratch:
        encrypted = Path(scratch) / "output.ccr"
        download(storage_names.OUTPUTS, storage_names.output_blob(run_id), encrypted, party)
        with open(encrypted, "rb") as source:
            header = package.read_header(source)
        if header.manifest.content_type != OUTPUT_CONTENT_TYPE:
            raise CliError(f"run {run_id}'s output has content type {header.manifest.content_type!r}, "
                           f"not {OUTPUT_CONTENT_TYPE}")
        key = load_local_key(directory, header.key_id)
        step(f"decrypt {run_id}'s output with key {header.key_id} into {args.output}")
        manifest = package.decrypt_file(encrypted, args.output, key)
    with zipfile.ZipFile(args.output) as archive:
        members = archive.namelist()
    emit({"run_id": run_id, "output": str(args.output), **manifest.pin(), "size": manifest.size,
          "members": members})


def _check_finished(args, run_id: str) -> None:
    """The run must have succeeded: with --wait, wait for it; a failed run's reason is the error."""
    from ccr.runs import _get, failure, wait_for_run
    if not run_id.startswith("run-"):
        raise CliError("--run-id looks like run-<16 hex digits> (`ccr contract submit` prints it)")
    record = wait_for_run(args, run_id) if args.wait else _get(args, f"runs/{run_id}")
    if record.get("status") == "failed":
        raise CliError(failure(record) + " (nothing to fetch; `ccr runs show` has its phases)")
    if record.get("status") != "succeeded" or record.get("phase") != "finished":
        raise CliError(f"run {run_id} is {record.get('status')} (phase {record.get('phase')}): nothing to fetch yet; "
                       "add --wait to wait for it, or follow it with `ccr runs watch`")
