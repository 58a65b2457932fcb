"""`ccr contract` and `ccr identity`: a party's did:web identity, and the signed contract.

  ccr identity new --name icmr --ledger URL        key pair (0600 PEM) + DID document on the ledger
  ccr contract new ... --out payload.json           contract payload (schema 2) from arguments and/or a template
  ccr contract sign --contract payload.json --did DID --key icmr.key.pem [--envelope in.cose] --out out.cose
                                                    signs, and grants your data keys to this contract
  ccr contract grant --contract payload.json --did DID   (again) grant your keys to this contract
  ccr contract submit --envelope signed.cose [--ledger URL]
  ccr contract verify --envelope signed.cose [--at TIME]
  ccr contract status --contract payload.json [--envelope signed.cose]
                                                    signers, inputs present and missing, the run, what next
"""
from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from ccr.common import (BlobExists, CliError, authority, contract_policy, create_kek, download_text, emit, keys_dir,
                        load_local_key, upload_text)
from ccr.ledger import call, ledger_url, reason
from ccr.party import DEFAULT_KEY_ID, add_identity_arguments, clean_room
from ccr.party import identity as party_identity
from ccr.party import session_for
from shared import trainer_resources

DEFAULT_VALIDATION_SPLIT = 0.2
DEFAULT_MIN_JOINED_ROWS = 100
DEFAULT_INFERENCE_MAX_ROWS = 100_000
DEFAULT_INFERENCE_DEADLINE_SECONDS = 600

NAME = "contract"
HELP = "contract: new, sign, grant, submit, verify, status"
IDENTITY_HELP = "identity: new (a party's did:web key pair, registered on the ledger)"


def register(groups) -> None:
    _register_identity(groups)
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    new = commands.add_parser("new", help="write a contract payload (JSON, schema 2)",
                              description="Write a contract payload from a template and/or arguments "
                                          "(arguments win). Package fields come from the publish outputs "
                                          "(--dataset-from, --model-from) or are given as pairs.")
    new.add_argument("--template", type=Path, help="a JSON payload (complete or partial) to start from")
    new.add_argument("--contract-id")
    new.add_argument("--purpose")
    new.add_argument("--valid-from", help="RFC 3339 time (default: now)")
    new.add_argument("--valid-until", help="RFC 3339 time (default: valid-from + 365 days)")
    new.add_argument("--tdc", metavar="DID", help="the TDC's did:web")
    new.add_argument("--model", metavar="blob=PATH,blake3=HEX,key_id=ID",
                     help="the TDC's model package (sha256=HEX instead of blake3 for a version-1 package)")
    new.add_argument("--model-from", metavar="FILE", type=Path,
                     help="the JSON `ccr tdc publish-model` printed (model package and output key id)")
    new.add_argument("--tdc-output", dest="output", metavar="key_id=ID[,webhook=URL]", help="the TDC's output key and webhook")
    new.add_argument("--dataset", action="append", default=[],
                     metavar="did=DID,name=N,blob=PATH,blake3=HEX,key_id=ID,epsilon=X[,version=V]",
                     help="one TDP dataset (repeat; datasets with the same did belong to one TDP); epsilon is "
                          "what this contract may spend; the dataset's lifetime budget is the declaration its "
                          "provider recorded on the ledger (`ccr tdp declare-budget`), fetched from there")
    new.add_argument("--dataset-from", action="append", default=[],
                     metavar="did=DID,file=PUBLISH.json,epsilon=X[,version=V]",
                     help="one TDP dataset from the JSON `ccr tdp publish` printed")
    new.add_argument("--key-vault", action="append", default=[], metavar="DID=URL",
                     help="the vault where that party creates its key-encryption keys (repeat; default for "
                          "every party: setting CCR_KEYVAULT_URL)")
    new.add_argument("--delta", type=float)
    new.add_argument("--validation-split", type=float, help=f"share of joined rows held out (default "
                                                             f"{DEFAULT_VALIDATION_SPLIT})")
    new.add_argument("--min-joined-rows", type=int, help=f"fewest joined rows a run may train on (default "
                                                         f"{DEFAULT_MIN_JOINED_ROWS})")
    new.add_argument("--join", type=Path, metavar="FILE", help="JSON join spec (workloads.training.join)")
    new.add_argument("--deadline-seconds", type=int)
    new.add_argument("--cpu", type=float, help=f"CPU cores for the trainer (default {trainer_resources.DEFAULT_CPU:g}, "
                                               f"at most {trainer_resources.MAX_CPU:g} in a confidential group)")
    new.add_argument("--memory-gb", type=float, help=f"memory for the trainer in GB (default "
                                                     f"{trainer_resources.DEFAULT_MEMORY_GB:g}, at most "
                                                     f"{trainer_resources.MAX_MEMORY_GB:g})")
    new.add_argument("--continued-training", action="store_true",
                     help="allow declared new dataset versions (`ccr tdp declare-version`) to continue training from "
                          "the last run's model inside the clean room (workloads.training.continued_training)")
    new.add_argument("--trainer-image", metavar="REF", help="ccr-trainer@sha256:<hex> (its policy template's "
                                                            "digest is pinned too)")
    new.add_argument("--skr-sidecar-image", metavar="REF",
                     help="the SKR sidecar the deployment runs, pinned by digest: <registry>/<repository>@sha256:<hex> "
                          "(default: setting CCR_SKR_SIDECAR_IMAGE, else the built-in pin); written into the contract "
                          "and into its policy template digest")
    new.add_argument("--inference-requester", action="append", default=[], metavar="DID",
                     help="a party that may submit inference batches (repeatable; any names the inference "
                          "workload: the trainer image under its inference command, the model kept inside)")
    new.add_argument("--inference-max-rows", type=int, help=f"largest inference batch (default "
                                                            f"{DEFAULT_INFERENCE_MAX_ROWS:,})")
    new.add_argument("--inference-deadline-seconds", type=int,
                     help=f"an inference run's deadline (default {DEFAULT_INFERENCE_DEADLINE_SECONDS})")
    new.add_argument("--withhold-weights", action="store_true",
                     help="the TDC gets each run's metrics and privacy report but never the model's weights, which "
                          "stay inside for inference (workloads.inference.weights_leave false)")
    new.add_argument("--ledger", help="ledger URL, where the datasets' budget declarations are read (default: "
                                      "setting CCR_LEDGER_URL)")
    new.add_argument("--out", type=Path, required=True)
    new.set_defaults(func=run_new)

    sign = commands.add_parser("sign", help="add your signature to the contract envelope and grant your keys",
                               description="Sign the contract and, for each of your packages in it (and the output "
                                           "key, for the TDC), grant its data key to this contract only: a "
                                           "key-encryption key in your vault released only to this contract's "
                                           "attested trainer, and the data key wrapped under it.")
    sign.add_argument("--contract", type=Path, required=True, help="the payload JSON every party agreed on")
    sign.add_argument("--did", required=True, help="your did:web")
    sign.add_argument("--key", type=Path, required=True, help="your private key (PEM, from `ccr identity new`)")
    sign.add_argument("--key-id", default=DEFAULT_KEY_ID, help="verification method id in your DID document")
    sign.add_argument("--envelope", type=Path, help="an envelope other parties already signed")
    sign.add_argument("--out", type=Path, required=True)
    sign.add_argument("--no-grant", action="store_true", help="sign only; grant later with `ccr contract grant`")
    _grant_arguments(sign)
    sign.set_defaults(func=run_sign)

    grant = commands.add_parser("grant", help="grant your data keys to a contract (done by sign)")
    grant.add_argument("--contract", type=Path, required=True, help="the payload JSON you signed")
    grant.add_argument("--did", required=True, help="your did:web")
    grant.add_argument("--key", type=Path, help="your private key (PEM): with CCR_FUNCTIONS_URL, grants are written "
                                                "through SAS URLs the clean room issues to you")
    grant.add_argument("--key-id", default=DEFAULT_KEY_ID, help="verification method id in your DID document")
    _grant_arguments(grant)
    grant.set_defaults(func=run_grant)

    submit = commands.add_parser("submit", help="register the envelope on the contract ledger")
    submit.add_argument("--envelope", type=Path, required=True)
    submit.add_argument("--ledger", help="ledger URL (default: setting CCR_LEDGER_URL)")
    submit.set_defaults(func=run_submit)

    verify = commands.add_parser("verify", help="check every signature and the validity window locally")
    verify.add_argument("--envelope", type=Path, required=True)
    verify.add_argument("--at", help="RFC 3339 time to check validity at (default: now)")
    verify.set_defaults(func=run_verify)

    status = commands.add_parser("status", help="signers, inputs present and missing, and the run of a contract",
                                 description="Ask the clean room, as a party of the contract, what it knows of it: "
                                             "whether the ledger delivered it (fully signed), who signed, which "
                                             "inputs have arrived and which are missing (and whose they are), and "
                                             "its run; `next` says what happens or what to do next. Before the "
                                             "clean room has it, the signers come from --envelope.")
    status.add_argument("--contract", type=Path, required=True, help="the payload JSON every party agreed on")
    status.add_argument("--envelope", type=Path, help="your copy of the signed envelope (signers before submission)")
    status.add_argument("--url", help="the Functions app's base URL (default: setting CCR_FUNCTIONS_URL)")
    add_identity_arguments(status)
    status.set_defaults(func=run_status)


def _grant_arguments(parser) -> None:
    parser.add_argument("--keys-dir", type=Path, help="where your data keys are (default: $CCR_KEYS_DIR or ~/.ccr/keys)")
    parser.add_argument("--authority", metavar="URL",
                        help="attestation authority the release policies trust (default: setting CCR_MAA_URL)")


def _register_identity(groups) -> None:
    parser = groups.add_parser("identity", help=IDENTITY_HELP, description=IDENTITY_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    new = commands.add_parser("new", help="create a P-256 key pair and register its DID document",
                              description="Create did:web:<ledger host>:<name>: the private key is written "
                                          "0600 to <dir>/<name>.key.pem, the DID document is hosted by the ledger "
                                          "(registered with a proof of possession signed by the new key).")
    new.add_argument("--name", required=True, help="party name (letters, digits, '.', '_', '-')")
    new.add_argument("--ledger", help="ledger URL (default: setting CCR_LEDGER_URL)")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to write the private key (default: .)")
    new.add_argument("--key-id", default=DEFAULT_KEY_ID)
    new.set_defaults(func=run_identity_new)


# --- identity --------------------------------------------------------------------------

def run_identity_new(args) -> None:
    from shared import did as dids
    ledger = ledger_url(args)
    parts = urlsplit(ledger)
    if parts.scheme != "https" or not parts.hostname:
        raise CliError("--ledger must be an https:// URL (did:web documents are served over HTTPS)")
    try:
        identity = dids.Identity.generate(dids.did_web(parts.hostname, parts.port, args.name), args.key_id)
    except dids.DidError as error:
        raise CliError(str(error)) from None
    key_path = args.dir / f"{args.name}.key.pem"
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        identity.save_key(key_path)
    except FileExistsError:
        raise CliError(f"{key_path} exists: not overwriting a private key") from None
    # proof of possession: the ledger records the document only with a fresh JWS by its key, for it
    response = call("POST", f"{ledger}/dids", json={"document": identity.document(),
                                             "proof": dids.registration_proof(identity, ledger)})
    if response.status_code not in (200, 201):
        key_path.unlink()   # an unregistered key is of no use and must not be mistaken for one
        raise CliError(f"ledger refused the DID document (HTTP {response.status_code}): {reason(response)}")
    emit({"did": identity.did, "key_ref": identity.key_ref, "key_file": str(key_path),
          "document_url": dids.document_url(identity.did)})


# --- contract new ---------------------------------------------------------------------

def _pin(fields: dict, option: str) -> dict:
    """The package's commitment as the contract pins it: blake3=HEX (a version-2 package, what
    `ccr tdp publish` writes) or sha256=HEX (version 1), exactly one."""
    from shared.package import COMMITMENTS
    named = [name for name in COMMITMENTS.values() if name in fields]
    if len(named) != 1:
        raise CliError(f"{option}: give exactly one of {' or '.join(COMMITMENTS.values())} (the package's digest)")
    return {named[0]: fields[named[0]]}


def _pairs(text: str, option: str, required: tuple[str, ...]) -> dict:
    fields = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not value:
            raise CliError(f"{option}: expected name=value pairs separated by commas, got {part!r}")
        fields[name.strip()] = value.strip()
    missing = [name for name in required if name not in fields]
    if missing:
        raise CliError(f"{option}: missing {', '.join(missing)}")
    return fields


def _read_json(path: Path, option: str):
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise CliError(f"{option}: cannot read {path} ({error.strerror})") from None
    except ValueError:
        raise CliError(f"{option}: {path} is not JSON") from None


def _terms(fields: dict, option: str, name: str, args) -> dict:
    """epsilon and version from the pairs; the budget declaration from the ledger."""
    if "threshold" in fields:
        raise CliError(f"{option}: a dataset's lifetime budget is no longer a contract term: its provider "
                       "declares it once on the ledger (`ccr tdp declare-budget`)")
    try:
        epsilon, version = float(fields["epsilon"]), int(fields.get("version", 1))
    except ValueError:
        raise CliError(f"{option}: epsilon and version must be numbers") from None
    return {"epsilon": epsilon, "version": version, "budget": recorded_budget(args, fields["did"], name)}


def recorded_budget(args, provider: str, dataset: str) -> str:
    """The budget declaration the ledger recorded for that provider's dataset."""
    response = call("GET", f"{ledger_url(args)}/budgets", params={"provider": provider, "dataset": dataset})
    if response.status_code == 404:
        raise CliError(f"{provider} has declared no lifetime budget for dataset {dataset} on the ledger: the "
                       "provider runs `ccr tdp declare-budget` first")
    if response.status_code != 200:
        raise CliError(f"ledger refused to give the budget of {dataset} (HTTP {response.status_code}): "
                       f"{reason(response)}")
    return response.json()["declaration"]


def _datasets(args) -> dict[str, list]:
    by_provider: dict[str, list] = {}
    for text in args.dataset:
        fields = _pairs(text, "--dataset", ("did", "name", "blob", "key_id", "epsilon"))
        by_provider.setdefault(fields["did"], []).append(
            {**{k: fields[k] for k in ("name", "blob", "key_id")}, **_pin(fields, "--dataset"),
             **_terms(fields, "--dataset", fields["name"], args)})
    for text in args.dataset_from:
        fields = _pairs(text, "--dataset-from", ("did", "file", "epsilon"))
        published = _read_json(Path(fields["file"]), "--dataset-from")
        if not isinstance(published, dict) or not all(k in published for k in ("dataset", "blob", "key_id")):
            raise CliError(f"--dataset-from: {fields['file']} is not the output of `ccr tdp publish`")
        by_provider.setdefault(fields["did"], []).append(
            {"name": published["dataset"], **{k: published[k] for k in ("blob", "key_id")},
             **_pin(published, "--dataset-from"),
             **_terms(fields, "--dataset-from", published["dataset"], args)})
    return by_provider


def _vaults(args) -> dict[str, str]:
    vaults = {}
    for text in args.key_vault:
        did, sep, url = text.rpartition("=")
        if not sep or not did or not url:
            raise CliError(f"--key-vault: expected DID=URL, got {text!r}")
        vaults[did] = url
    return vaults


def build_payload(args) -> dict:
    """Template, then arguments; defaults for the evaluation terms and the parties' vaults."""
    from shared import contract as contracts
    from shared import settings
    from shared.container_group import policy_template_sha256
    payload = _read_json(args.template, "--template") if args.template else {}
    if not isinstance(payload, dict):
        raise CliError("--template: not a JSON object")
    payload["schema_version"] = contracts.SCHEMA_VERSION
    for option, key in (("contract_id", "contract_id"), ("purpose", "purpose"),
                        ("valid_from", "valid_from"), ("valid_until", "valid_until")):
        if getattr(args, option) is not None:
            payload[key] = getattr(args, option)
    start = payload.setdefault("valid_from", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if "valid_until" not in payload:
        try:
            payload["valid_until"] = (datetime.fromisoformat(start) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise CliError(f"--valid-from: {start!r} is not an RFC 3339 time") from None
    tdc = payload.setdefault("tdc", {})
    if args.tdc:
        tdc["did"] = args.tdc
    if args.model_from:
        published = _read_json(args.model_from, "--model-from")
        try:
            tdc["model"] = {**{k: published["model"][k] for k in ("blob", "key_id")},
                            **_pin(published["model"], "--model-from")}
            tdc.setdefault("output", {})["key_id"] = published["output_key_id"]
        except (KeyError, TypeError):
            raise CliError(f"--model-from: {args.model_from} is not the output of `ccr tdc publish-model`") from None
    if args.model:
        fields = _pairs(args.model, "--model", ("blob", "key_id"))
        tdc["model"] = {**{k: fields[k] for k in ("blob", "key_id")}, **_pin(fields, "--model")}
    if args.output:
        tdc["output"] = {**tdc.get("output", {}), **_pairs(args.output, "--tdc-output", ())}
    datasets = _datasets(args)
    if datasets:
        payload["tdps"] = [{"did": did, "datasets": entries} for did, entries in datasets.items()]
    vaults, default_vault = _vaults(args), settings.get("CCR_KEYVAULT_URL")
    for party in [tdc, *[tdp for tdp in payload.get("tdps") or [] if isinstance(tdp, dict)]]:
        vault = vaults.get(party.get("did")) or party.get("key_vault") or default_vault
        if vault:
            party["key_vault"] = vault.rstrip("/")
    if args.delta is not None:
        payload.setdefault("privacy", {})["delta"] = args.delta
    evaluation = payload.setdefault("evaluation", {})
    evaluation["validation_split"] = args.validation_split if args.validation_split is not None else \
        evaluation.get("validation_split", DEFAULT_VALIDATION_SPLIT)
    evaluation["min_joined_rows"] = args.min_joined_rows if args.min_joined_rows is not None else \
        evaluation.get("min_joined_rows", DEFAULT_MIN_JOINED_ROWS)
    training = payload.setdefault("workloads", {}).setdefault("training", {})
    if args.join:
        training["join"] = _read_json(args.join, "--join")
    if args.deadline_seconds is not None:
        training["deadline_seconds"] = args.deadline_seconds
    for option, key in (("cpu", "cpu"), ("memory_gb", "memory_gb")):
        if getattr(args, option) is not None:
            training.setdefault("resources", {})[key] = getattr(args, option)
    if args.continued_training:
        training["continued_training"] = True
    if args.trainer_image:
        sidecar = _sidecar(args)
        try:
            training["policy_template_sha256"] = policy_template_sha256(args.trainer_image, sidecar)
        except ValueError as error:
            raise CliError(f"--trainer-image: {error}") from None
        training["image"] = args.trainer_image
        training["skr_sidecar_image"] = sidecar.image
    elif args.skr_sidecar_image:
        raise CliError("--skr-sidecar-image: give --trainer-image too (the policy template digest covers both)")
    _inference_terms(args, payload)
    try:
        return contracts.validate_payload(payload)
    except contracts.ContractError as error:
        raise CliError(str(error)) from None


def _inference_terms(args, payload: dict) -> None:
    """The inference workload from `--inference-*` and `--withhold-weights`: the training image
    under the inference command, its policy template pinned with the same sidecar."""
    from shared.container_group import policy_template_sha256
    if not args.inference_requester:
        for option, given in (("--inference-max-rows", args.inference_max_rows is not None),
                              ("--inference-deadline-seconds", args.inference_deadline_seconds is not None),
                              ("--withhold-weights", args.withhold_weights)):
            if given:
                raise CliError(f"{option}: name who may ask with --inference-requester first")
        return
    if not args.trainer_image:
        raise CliError("--inference-requester: give --trainer-image too (inference runs the same image)")
    payload["workloads"]["inference"] = {
        "image": args.trainer_image,
        "policy_template_sha256": policy_template_sha256(args.trainer_image, _sidecar(args), workload="inference"),
        "requesters": args.inference_requester, "weights_leave": not args.withhold_weights,
        "deadline_seconds": DEFAULT_INFERENCE_DEADLINE_SECONDS if args.inference_deadline_seconds is None
        else args.inference_deadline_seconds,
        "max_rows": DEFAULT_INFERENCE_MAX_ROWS if args.inference_max_rows is None else args.inference_max_rows}


def _sidecar(args):
    """The SKR sidecar the deployment runs: `--skr-sidecar-image`, else the setting, else the
    default (shared/skr_sidecar.py); a tag is refused, naming where it came from."""
    from shared import skr_sidecar
    try:
        if args.skr_sidecar_image:
            return skr_sidecar.SidecarSpec(skr_sidecar.pinned_image(args.skr_sidecar_image, "--skr-sidecar-image"))
        return skr_sidecar.configured()
    except skr_sidecar.SidecarError as error:
        raise CliError(str(error)) from None


def run_new(args) -> None:
    from shared import contract as contracts
    payload = build_payload(args)
    _write(args.out, json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n")
    emit({"contract_id": payload["contract_id"], "out": str(args.out),
          "digest": contracts.payload_digest(contracts.canonical_json(payload)),
          "parties": contracts.parties(payload)})


# --- sign / submit / verify --------------------------------------------------------

def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _read_bytes(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"{option}: cannot read {path} ({error.strerror})") from None


def run_sign(args) -> None:
    from shared import contract as contracts
    from shared import did as dids
    payload = _read_json(args.contract, "--contract")
    try:
        identity = dids.Identity(args.did, dids.load_private_key(args.key), args.key_id)
        fresh = contracts.new_envelope(payload)
        envelope = fresh
        if args.envelope:
            envelope = _read_bytes(args.envelope, "--envelope")
            if contracts.envelope_signers(envelope)[0] != contracts.envelope_signers(fresh)[0]:
                raise CliError(f"{args.envelope} signs a different contract than {args.contract}")
        signed = contracts.add_signature(envelope, identity)
        _, signers = contracts.envelope_signers(signed)
    except (contracts.ContractError, dids.DidError) as error:
        raise CliError(str(error)) from None
    granted = [] if args.no_grant else grant_keys(payload, identity.did, keys_dir(args), authority(args),
                                                  session_for(identity))
    _write(args.out, signed)
    emit({"contract_id": payload["contract_id"], "signed_by": identity.did, "signers": signers,
          "missing": [did for did in contracts.parties(payload) if did not in signers], "out": str(args.out),
          "granted": granted})


def run_grant(args) -> None:
    from shared import contract as contracts
    payload = _read_json(args.contract, "--contract")
    try:
        contracts.validate_payload(payload)
    except contracts.ContractError as error:
        raise CliError(str(error)) from None
    if args.did not in contracts.parties(payload):
        raise CliError(f"{args.did} is not a party to contract {payload['contract_id']}")
    emit({"contract_id": payload["contract_id"], "granted": grant_keys(payload, args.did, keys_dir(args),
                                                                       authority(args),
                                                                       session_for(party_identity(args)))})


def grant_keys(payload: dict, did: str, directory: Path, authority_url: str, party=None) -> list[dict]:
    """For each of `did`'s keys in the contract: its KEK for this contract (created in the
    party's vault with this contract's release policy) and the data key wrapped under it,
    written through `party`'s SAS (ccr.party) when given, else with the storage connection."""
    from shared import contract as contracts
    from shared import key_grants
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    policy = contract_policy(authority_url, payload, digest)
    granted = []
    for subject in key_grants.subjects(payload):
        if subject.grantor != did:
            continue
        data_key = load_local_key(directory, subject.key_id)
        kek = key_grants.kek_name(digest, subject.subject)
        wrapped = key_grants.wrap(data_key, create_kek(subject.key_vault, kek, policy), kek, subject.key_id)
        _write_grant(payload, key_grants.grant_blob(digest, subject.subject), wrapped, kek, subject.key_id, party)
        granted.append({"subject": subject.label, "key_id": subject.key_id, "kek": kek,
                        "grant": key_grants.grant_path(digest, subject.subject)})
    return granted


def _write_grant(payload: dict, blob: str, wrapped: str, kek: str, key_id: str, party) -> None:
    """Through a SAS a grant is written once; a retry finds its earlier grant (the KEK is reused,
    so it still unwraps) and keeps it if it names the same KEK and data key."""
    from shared import key_grants, storage_names
    try:
        upload_text(storage_names.GRANTS, blob, wrapped, party, payload)
    except BlobExists:
        existing = download_text(storage_names.GRANTS, blob, party, payload)
        if existing is None:
            raise CliError(f"storage refused grant {storage_names.GRANTS}/{blob}") from None
        try:
            key_grants.check_header(existing, kek, key_id)
        except key_grants.GrantError as error:
            raise CliError(f"an earlier grant {storage_names.GRANTS}/{blob} is there and {error} "
                           "(a grant is written once)") from None


def run_submit(args) -> None:
    envelope = _read_bytes(args.envelope, "--envelope")
    response = call("POST", f"{ledger_url(args)}/entries", data=envelope, headers={"Content-Type": "application/cose"})
    if response.status_code != 201:
        raise CliError(f"ledger refused the envelope (HTTP {response.status_code}): {reason(response)}")
    from shared.run_records import run_id_for
    entry = response.json()
    try:   # a contract has one run, named by its id and digest: say which, to watch or fetch it
        entry["run_id"] = run_id_for(entry["contract_id"], entry["digest"])
    except (KeyError, TypeError, ValueError):
        pass
    emit(entry)


def run_verify(args) -> None:
    from shared import contract as contracts
    envelope = _read_bytes(args.envelope, "--envelope")
    at = None
    if args.at:
        try:
            at = contracts.parse_time(args.at, "--at")
        except contracts.ContractError as error:
            raise CliError(str(error)) from None
    try:
        contract = contracts.verify_contract(envelope, now=at)
    except contracts.ContractError as error:
        raise CliError(f"{type(error).__name__}: {error}") from None
    emit({"contract_id": contract.contract_id, "digest": contract.digest, "signers": list(contract.signers),
          "valid_from": contract.payload["valid_from"], "valid_until": contract.payload["valid_until"],
          "verified": True})


def _next_step(status: dict) -> str:
    """What happens next, or what the reader should do."""
    if not status.get("accepted"):
        if status.get("missing_signatures"):
            return ("waiting for signatures of " + ", ".join(status["missing_signatures"]) + ": each runs `ccr "
                    "contract sign --envelope <the envelope so far>`; then one submits it (`ccr contract submit`)")
        return ("the clean room has not received it: submit the fully signed envelope (`ccr contract submit "
                "--envelope ...`); the ledger then delivers it (retrying until the clean room answers)")
    run = status.get("run")
    if status["missing"]:
        owners = sorted({item["party"] for item in status["inputs"] if not item["present"]})
        return (f"waiting for {len(status['missing'])} input(s) to arrive (from {', '.join(owners)}: `ccr tdp "
                "publish` / `ccr tdc publish-model`); the run starts by itself when the last one arrives")
    if run is None:
        return "every input is in: the run is starting"
    if run["status"] == "succeeded" and run.get("phase") == "finished":
        return f"run succeeded: the TDC fetches the model with `ccr tdc fetch --run-id {run['run_id']} --out model.zip`"
    if run["status"] == "failed" and run.get("phase") == "finished":
        return f"run failed: {run.get('reason') or 'no reason recorded'}"
    return f"run {run['run_id']} is {run['status']} (phase {run['phase']}): `ccr runs watch {run['run_id']}` follows it"


def run_status(args) -> None:
    from shared import contract as contracts
    from shared.run_records import run_id_for
    payload = _read_json(args.contract, "--contract")
    try:
        payload = contracts.validate_payload(payload)
    except contracts.ContractError as error:
        raise CliError(f"--contract: {error}") from None
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    session = clean_room(args, required=True)
    response = session.request("GET", f"contracts/{payload['contract_id']}/{digest}")
    if response.status_code == 200:
        status = {**response.json(), "accepted": response.json().get("accepted") or True}
    elif response.status_code == 404:
        status = {"contract_id": payload["contract_id"], "digest": digest, "accepted": False,
                  "parties": contracts.parties(payload), "run_id": run_id_for(payload["contract_id"], digest),
                  "run": None}
        if args.envelope:
            try:
                signed, signers = contracts.envelope_signers(_read_bytes(args.envelope, "--envelope"))
            except (contracts.ContractError, ValueError):
                raise CliError(f"--envelope: {args.envelope} is not a contract envelope") from None
            if contracts.payload_digest(contracts.canonical_json(signed)) != digest:
                raise CliError(f"--envelope: {args.envelope} signs a different contract than {args.contract}")
            status["signers"] = signers
            status["missing_signatures"] = [did for did in status["parties"] if did not in signers]
    elif response.status_code == 401:
        raise CliError("the clean room refused your access token (HTTP 401): is CCR_PARTY_KEY the key of your DID?")
    else:
        raise CliError(f"the clean room answered HTTP {response.status_code} for the contract's status")
    status["next"] = _next_step(status)
    emit(status)
