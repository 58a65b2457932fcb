"""`ccr infer`: what a requester runs for confidential batch inference under a contract that
names it in `workloads.inference.requesters` - grant its inference keys, submit a batch, fetch
and decrypt its predictions.

`grant` makes the requester's two data keys for this contract (batch, output; key ids derived
from the contract and the requester: shared/inference_requests.py), kept locally in the keys
dir like every other key, and grants each to the contract's *inference* group only (a KEK in the
requester's vault whose release policy pins that group's host data). `submit` encrypts a
prepared CSV (`row_id` and the model's feature columns) under the batch key and uploads it to
`inference-batches/<your name>/<contract digest>/<batch>.ccr`: its arrival starts the inference.
`fetch` downloads `predictions/<run id>/predictions.ccr` (a SAS the clean room issues to the
requester of that run only) and decrypts it with the output key."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ccr.common import (CliError, _key_file, authority, create_kek, download, emit, keys_dir, load_local_key,
                        plain_name, save_local_key, step, upload)
from ccr.contract import _read_json, _write_grant
from ccr.party import add_identity_arguments, clean_room, party_did

NAME = "infer"
HELP = "inference requester: grant, submit, fetch"


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    grant = commands.add_parser("grant", help="grant your inference batch and output keys to a contract's inference")
    submit = commands.add_parser("submit", help="encrypt and upload a batch: its arrival starts the inference")
    fetch = commands.add_parser("fetch", help="download and decrypt an inference run's predictions")
    for command in (grant, submit, fetch):
        command.add_argument("--contract", required=True, type=Path, help="the contract payload (JSON) you signed")
        command.add_argument("--keys-dir", type=Path, help="where your inference keys are kept")
        add_identity_arguments(command)
    grant.add_argument("--authority", help="attestation authority (default: setting CCR_MAA_URL)")
    grant.set_defaults(func=run_grant)
    submit.add_argument("--input", required=True, type=Path, help="prepared CSV: row_id and the model's features")
    submit.add_argument("--batch", required=True, help="the batch's name (letters, digits, '-', '_')")
    submit.set_defaults(func=run_submit)
    fetch.add_argument("--run-id", required=True, help="the inference run id (from `submit` or its event)")
    fetch.add_argument("--out", dest="output", required=True, type=Path, help="CSV to write (row_id,probability,label)")
    fetch.set_defaults(func=run_fetch)


def _terms(args) -> tuple[dict, str, str]:
    """(payload, its digest, your DID) once the contract names you as a requester."""
    from shared import contract as contracts
    payload = _read_json(args.contract, "--contract")
    try:
        contracts.validate_payload(payload)
    except contracts.ContractError as error:
        raise CliError(str(error)) from None
    did = party_did(args, required=True)
    if did not in (contracts.inference(payload) or {}).get("requesters", []):
        raise CliError(f"contract {payload['contract_id']} does not name {did} as an inference requester")
    return payload, contracts.payload_digest(contracts.canonical_json(payload)), did


def _key(directory: Path, key_id: str) -> bytes:
    from shared import package
    if not _key_file(directory, key_id).exists():
        save_local_key(directory, key_id, os.urandom(package.KEY_SIZE))
    return load_local_key(directory, key_id)


def run_grant(args) -> None:
    from shared import inference_requests, key_grants
    payload, digest, did = _terms(args)
    policy = key_grants.inference_release_policy(authority(args), payload, digest)
    party, directory, granted = clean_room(args), keys_dir(args), []
    for subject in inference_requests.grant_subjects(payload, did):
        kek = key_grants.kek_name(digest, subject.subject)
        wrapped = key_grants.wrap(_key(directory, subject.key_id), create_kek(subject.key_vault, kek, policy), kek,
                                  subject.key_id)
        _write_grant(payload, key_grants.grant_blob(digest, subject.subject), wrapped, kek, subject.key_id, party)
        granted.append({"subject": subject.label, "key_id": subject.key_id, "kek": kek,
                        "grant": key_grants.grant_path(digest, subject.subject)})
    emit({"contract_id": payload["contract_id"], "granted": granted})


def run_submit(args) -> None:
    from shared import inference_requests, package, storage_names
    from shared.did import did_name
    payload, digest, did = _terms(args)
    batch = plain_name(args.batch, "--batch")
    if not args.input.is_file():
        raise CliError(f"--input: {args.input} is not a file")
    key_id = inference_requests.key_id(payload["contract_id"], did, inference_requests.INPUT)
    path = inference_requests.batch_path(did_name(did), digest, batch)
    with tempfile.TemporaryDirectory(prefix="ccr-batch-") as scratch:
        encrypted = Path(scratch) / "batch.ccr"
        manifest = package.encrypt_file(args.input, encrypted, _key(keys_dir(args), key_id), key_id,
                                        inference_requests.CONTENT_TYPE, None)
        step(f"upload {path}")
        upload(storage_names.INFERENCE_BATCHES, path.split("/", 1)[1], encrypted, clean_room(args))
    emit({"batch": path, "run_id": inference_requests.run_id(payload["contract_id"], digest, path), **manifest.pin()})


def run_fetch(args) -> None:
    from shared import inference_requests, package, storage_names
    payload, _, did = _terms(args)
    run_id = plain_name(args.run_id, "--run-id")
    with tempfile.TemporaryDirectory(prefix="ccr-predictions-") as scratch:
        encrypted = Path(scratch) / "predictions.ccr"
        download(storage_names.PREDICTIONS, inference_requests.predictions_path(run_id).split("/", 1)[1], encrypted,
                 clean_room(args))
        key_id = inference_requests.key_id(payload["contract_id"], did, inference_requests.OUTPUT)
        with open(encrypted, "rb") as source:
            if package.read_header(source).key_id != key_id:
                raise CliError(f"run {run_id}'s predictions are not under your output key for this contract")
        manifest = package.decrypt_file(encrypted, args.output, load_local_key(keys_dir(args), key_id))
    emit({"run_id": run_id, "output": str(args.output), **manifest.pin(), "size": manifest.size})
