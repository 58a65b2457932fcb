"""The COVID reference scenario, played by every party with the `ccr` tool against a running
`Stack`: three TDPs prepare, encrypt, upload and import keys; the TDC publishes its model
and output key; all four sign; the ledger calls our webhook; the run starts by itself; the
TDC is notified, fetches and decrypts the trained model.

Each party runs `ccr` with a party's settings only (`Stack.party_settings`) and its own did:web
identity: it holds no storage account key, and its uploads, grants and downloads go through
SAS URLs the clean room issues for its own blobs (`POST /api/sas`).

Used by `python -m local_emulator demo`, the end-to-end tests and bench/run_overhead.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import zipfile
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ccr.cli import main as ccr_main
from local_emulator import covid_reference
from local_emulator.images import build_image
from local_emulator.registry import LocalRegistry
from local_emulator.stack import Stack, wait_for
from shared import azure_clients
from shared import contract as contracts
from shared.run_records import run_id_for
from shared.settings import PROJECT_ROOT

PROVIDERS = covid_reference.RAW_FILES
CONFIGS = PROJECT_ROOT / "configs" / "covid"
# The scenario's default (tests, benchmarks): the source tarball, which needs no 6-minute first
# build; the demo runs the real image (local_emulator/demo.py).
DEFAULT_TRAINER_IMAGE_KIND = "tarball"
TRAINER_IMAGE_KINDS = ("oci", "tarball")
DELTA = 1e-5  # the contracts' delta, and each dataset's declared lifetime delta (room for one run)


def trainer_image_kind(default: str = DEFAULT_TRAINER_IMAGE_KIND) -> str:
    """`oci` (the real trainer image) or `tarball`, from CCR_TRAINER_IMAGE, else `default`."""
    kind = os.environ.get("CCR_TRAINER_IMAGE") or default
    if kind not in TRAINER_IMAGE_KINDS:
        raise ValueError(f"CCR_TRAINER_IMAGE must be 'oci' or 'tarball', not {kind!r}")
    return kind


class CommandFailed(RuntimeError):
    pass


class TdcInbox:
    """The TDC's own endpoints: `/notify` records the webhook notices our system sends,
    `/events` is its Event Grid subscription (validation handshake, then event batches)."""

    def __init__(self):
        self.notices: list[dict] = []
        self.received_at: list[datetime] = []
        self.events: list[dict] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    document = json.loads(body)
                except ValueError:
                    return self._answer(400)
                if self.path == "/events":
                    if self.headers.get("aeg-event-type") == "SubscriptionValidation":
                        return self._answer(200, {"validationResponse": document[0]["data"]["validationCode"]})
                    inbox.events.extend(document)
                else:
                    inbox.notices.append(document)
                    inbox.received_at.append(datetime.now(timezone.utc))
                self._answer(200)

            def _answer(self, status: int, body: dict | None = None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url, self.events_url = f"{base}/notify", f"{base}/events"

    def start(self) -> "TdcInbox":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class CovidScenario:
    """Each step is a `ccr` command, run in this process with the stack's settings. What is
    COVID's (the providers, their raw tables and configs, the model, its training config, the
    join, the purpose) comes from the hooks below; another scenario overrides only those
    (local_emulator/loan_scenario.py)."""

    providers: tuple[str, ...] = tuple(PROVIDERS)  # each provider's party name is its dataset's name
    purpose = "COVID test-result model"

    def __init__(self, stack: Stack, workdir: Path, contract_id: str = "covid-demo",
                 epsilon: float = 1.5, deadline_seconds: int = 300, echo=print, training_overrides=None,
                 image_kind: str | None = None, continued_training: bool = False, lifetime_runs: int = 1,
                 inference_requesters: tuple[str, ...] = (), withhold_weights: bool = False):
        self.stack, self.workdir, self.contract_id = stack, Path(workdir), contract_id
        self.continued_training, self.lifetime_runs = continued_training, lifetime_runs
        self.inference_requesters, self.withhold_weights = tuple(inference_requesters), withhold_weights
        self.image_kind = image_kind or trainer_image_kind()
        self.epsilon, self.deadline_seconds, self.echo = epsilon, deadline_seconds, echo
        self.training_overrides = training_overrides or {}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.published: dict[str, dict] = {}
        self.identities: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.digest: str | None = None     # of the contract last written or submitted
        self.inbox = TdcInbox().start()

    def close(self) -> None:
        self.inbox.stop()

    # --- the scenario's inputs (hooks) ------------------------------------------------------

    def raw_table(self, name: str) -> Path:
        """Provider `name`'s raw export, before de-identification."""
        return covid_reference.COVID_DATA / PROVIDERS[name]

    def prepare_config(self, name: str) -> Path:
        return CONFIGS / f"{name}.json"

    def model_onnx(self) -> bytes:
        return covid_reference.covid_onnx()

    def training_config(self) -> dict:
        return covid_reference.covid_training_config(epsilon=self.epsilon, **self.training_overrides)

    def join_spec(self) -> dict:
        return covid_reference.covid_join_spec({name: "pseudonym" for name in self.providers})

    # --- running ccr ---------------------------------------------------------------------

    def party_environment(self, party: str | None) -> dict:
        """A party's settings (`Stack.party_settings`: no storage connection, no function key,
        no service secret) and, once it has one, its identity as its profile (CCR_PARTY_DID /
        CCR_PARTY_KEY); every other setting of the stack is unset for the command."""
        hidden = dict.fromkeys(set(self.stack.settings) | {"AzureWebJobsStorage", "CCR_STORAGE_CONNECTION"})
        environment = {**hidden, **self.stack.party_settings(self.workdir / "no-emulator", party or "party")}
        if party in self.identities:
            environment.update(CCR_PARTY_DID=self.identities[party]["did"], CCR_PARTY_KEY=self.identities[party]["key_file"])
        return environment

    def ccr(self, *args: str, party: str | None = None) -> dict:
        """`ccr ARGS` as `party` (with only a party's settings and that party's identity); its
        JSON result."""
        self.echo("$ ccr " + " ".join(_shorten(a) for a in args))
        out, err = io.StringIO(), io.StringIO()
        with _environment(self.party_environment(party)), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            azure_clients.blob_service.cache_clear()
            try:
                status = ccr_main(list(args))
            except SystemExit as exit_:
                status = exit_.code
        if status:
            raise CommandFailed(f"ccr {args[0]} {args[1]} failed ({status}): {err.getvalue().strip()}")
        return json.loads(out.getvalue()) if out.getvalue().strip() else {}

    # --- the parties' steps ----------------------------------------------------------------

    def build_trainer_image(self) -> str:
        """The trainer image the contract pins: the real OCI image (tools/trainer_image.py, built
        once per machine and cached; pushed to the stack's registry, pulled and run chrooted by
        the ACI twin) when the scenario's image kind is `oci`, else (`tarball`) the source
        tarball of trainer_container/ + shared/ run with the host's Python."""
        if self.image_kind == "oci":
            from tools.trainer_image import TRAINER_REPOSITORY, build_trainer_image
            built = build_trainer_image()
            reference = LocalRegistry(self.stack.registry_dir).push(built.layout, TRAINER_REPOSITORY, built.tag)
        else:
            reference = build_image(images_dir=self.stack.state_dir / "images").ref
        self.trainer_image = reference
        self.echo(f"trainer image: {reference}")
        return reference

    def prepare_and_publish_datasets(self) -> None:
        self.create_identities()  # a party's blobs live under its name, uploaded as that party
        if not self.pseudonym_key.exists():
            self.ccr("tdp", "pseudonym-key", "--out", str(self.pseudonym_key))
        for name in self.providers:
            prepared = self.prepare(name, self.raw_table(name), self.workdir / f"{name}.prepared.csv")
            self.published[name] = self.ccr("tdp", "publish", "--input", str(prepared), "--dataset", name,
                                            "--keys-dir", str(self.keys_dir(name)), party=name)
            (self.workdir / f"{name}.published.json").write_text(json.dumps(self.published[name]))

    def prepare(self, name: str, raw: Path, prepared: Path) -> Path:
        """Provider `name` de-identifies its raw export `raw` into `prepared` (the scenario's one
        pseudonym key, which every provider holds: they join on its pseudonyms)."""
        self.ccr("tdp", "prepare", "--config", str(self.prepare_config(name)), "--input", str(raw),
                 "--out", str(prepared), "--pseudonym-key-file", str(self.pseudonym_key))
        return prepared

    @property
    def pseudonym_key(self) -> Path:
        return self.workdir / "pseudonym.key"

    def publish_model(self) -> None:
        self.create_identities()
        model, training = self.workdir / "model.onnx", self.workdir / "training.json"
        model.write_bytes(self.model_onnx())
        training.write_text(json.dumps(self.training_config()))
        self.model = self.ccr("tdc", "publish-model", "--model", str(model), "--training", str(training),
                              "--keys-dir", str(self.keys_dir("tdc")), party="tdc")
        (self.workdir / "model.published.json").write_text(json.dumps(self.model))

    def keys_dir(self, party: str) -> Path:
        """Each party keeps its own data keys (a provider never holds another's)."""
        return self.workdir / "keys" / party

    def create_identities(self) -> None:
        """Each party's did:web key pair (once: publishing needs them already)."""
        for party in ("tdc", *self.providers):
            if party in self.identities:
                continue
            name = f"{self.contract_id}-{party}"
            self.identities[party] = self.ccr("identity", "new", "--name", name, "--dir", str(self.workdir / "ids"))

    def write_contract(self, **changes) -> Path:
        """The contract payload every party agrees on; `changes` overrides `ccr contract new`
        options (epsilon=2.0, skr_sidecar_image=...) for tests."""
        join = self.workdir / "join.json"
        join.write_text(json.dumps(self.join_spec()))
        payload = self.workdir / "contract.json"
        epsilon = changes.get("epsilon", self.epsilon)
        self.declare_budgets(epsilon)
        datasets = [f"did={self.identities[n]['did']},file={self.workdir / f'{n}.published.json'},epsilon={epsilon}"
                    for n in self.published]
        self.ccr("contract", "new", "--contract-id", self.contract_id, "--purpose", self.purpose,
                 "--tdc", self.identities["tdc"]["did"], "--model-from", str(self.workdir / "model.published.json"),
                 "--tdc-output", f"webhook={self.inbox.url}",
                 *[arg for d in datasets for arg in ("--dataset-from", d)],
                 "--delta", str(DELTA), "--validation-split", "0.2", "--min-joined-rows", "100",
                 "--join", str(join), "--deadline-seconds", str(self.deadline_seconds),
                 "--trainer-image", self.trainer_image, "--out", str(payload),
                 *(["--continued-training"] if self.continued_training else []),
                 *[arg for party in self.inference_requesters
                   for arg in ("--inference-requester", self.identities[party]["did"])],
                 *(["--withhold-weights"] if self.withhold_weights else []),
                 *(["--skr-sidecar-image", changes["skr_sidecar_image"]] if "skr_sidecar_image" in changes else []))
        self._note_contract(payload)
        return payload

    def grant_inference_keys(self, party: str) -> dict:
        """A requester the contract names makes its inference batch and output keys and grants
        them to the contract's inference group (`ccr infer grant`)."""
        return self.ccr("infer", "grant", "--contract", str(self.workdir / "contract.json"),
                        "--keys-dir", str(self.keys_dir(party)), party=party)

    def declare_budgets(self, epsilon: float) -> None:
        """Each provider declares its dataset's lifetime budget on the ledger (once per provider
        and dataset: the same declaration again is recorded already): room for `lifetime_runs`
        runs asking `epsilon` at DELTA."""
        for name in self.published:
            self.ccr("tdp", "declare-budget", "--dataset", name, "--epsilon", str(epsilon * self.lifetime_runs),
                     "--delta", str(DELTA * self.lifetime_runs), party=name)

    def publish_version(self, name: str, prepared: Path, version: int, declare: bool = True,
                        new_individuals: bool = False) -> dict:
        """Provider `name` publishes `prepared` as a later version of its dataset, under the data
        key it granted (and, with `declare`, declares it on the ledger first, as rows of people
        already in the dataset unless `new_individuals`): its arrival may start a continued run
        (docs/INTERFACES.md)."""
        declaring = ["--declare", *(["--new-individuals"] if new_individuals else [])] if declare else []
        return self.ccr("tdp", "publish", "--input", str(prepared), "--dataset", name, "--version", str(version),
                        "--data-key-id", self.published[name]["key_id"], "--keys-dir", str(self.keys_dir(name)),
                        *declaring, party=name)

    def _note_contract(self, payload: Path) -> None:
        """A contract is its id and its digest: remember the digest, hence the run id."""
        self.digest = contracts.payload_digest(contracts.canonical_json(json.loads(payload.read_text())))

    @property
    def run_id(self) -> str:
        """The run of the contract last written or submitted."""
        return run_id_for(self.contract_id, self.digest)

    def sign_and_submit(self, payload: Path, without_grant: tuple[str, ...] = ()) -> dict:
        """Each party signs (and, unless named in `without_grant`, grants its keys to this
        contract) in turn; then the last one submits."""
        self._note_contract(payload)
        envelope = None
        for party, identity in self.identities.items():
            out = self.workdir / f"contract.{party}.cose"
            self.ccr("contract", "sign", "--contract", str(payload), "--did", identity["did"],
                     "--key", identity["key_file"], "--keys-dir", str(self.keys_dir(party)), "--out", str(out),
                     *(["--no-grant"] if party in without_grant else []),
                     *(["--envelope", str(envelope)] if envelope else []), party=party)
            envelope = out
        self.submitted_at = time.monotonic()
        return self.ccr("contract", "submit", "--envelope", str(envelope))

    def publish_inputs(self) -> None:
        self.build_trainer_image()
        self.prepare_and_publish_datasets()
        self.publish_model()

    def notice_of(self, run_id: str, timeout: float) -> dict:
        """The TDC's notification about run `run_id`, once it has come."""
        return wait_for(lambda: next((n for n in self.inbox.notices if n["run_id"] == run_id), None), timeout,
                        what=f"the notice of {run_id}")

    def wait_for_notice(self, timeout: float) -> dict:
        notice = wait_for(lambda: self.inbox.notices[-1] if self.inbox.notices else None, timeout,
                          what="the TDC's notification")
        self.notified_at = time.monotonic()
        return notice

    def fetch_output(self, run_id: str, model_name: str = "trained.onnx") -> dict:
        """The run's output fetched and decrypted as the TDC; its model written to `model_name`."""
        output = self.workdir / "output.zip"
        result = self.ccr("tdc", "fetch", "--run-id", run_id, "--out", str(output),
                          "--keys-dir", str(self.keys_dir("tdc")), party="tdc")
        with zipfile.ZipFile(output) as archive:
            result["metrics"] = json.loads(archive.read("metrics.json"))
            result["privacy"] = json.loads(archive.read("privacy.json"))
            result["members"] = sorted(archive.namelist())
            (self.workdir / model_name).write_bytes(archive.read("model.onnx"))
        return result

    def run(self, timeout: float = 300) -> dict:
        """The whole scenario; returns the notice, the output and the run record."""
        self.publish_inputs()
        self.create_identities()
        self.sign_and_submit(self.write_contract())
        notice = self.wait_for_notice(timeout)
        result = {"notice": notice, "run": self.run_record(notice["run_id"])}
        if notice["status"] == "succeeded":
            result["output"] = self.fetch_output(notice["run_id"])
        return result

    @staticmethod
    def succeeded(result: dict) -> bool:
        """Whether the scenario's run (as `run` returned it) succeeded."""
        return result["notice"]["status"] == "succeeded"

    def run_record(self, run_id: str) -> dict:
        """The run as its TDC sees it through the status API (`ccr runs show`)."""
        return self.ccr("runs", "show", run_id, party="tdc")


@contextlib.contextmanager
def _environment(values: dict):
    """Set `values` (a None value unsets that variable) for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _shorten(arg: str) -> str:
    return arg if len(arg) < 60 else arg[:28] + "…" + arg[-20:]
