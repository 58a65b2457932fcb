"""python -m local_emulator up | host --app-dir DIR --port P | demo [covid|loan [--rows N] [--batch-rows N] [--seed-scale]] [--image oci|tarball]"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shared.settings import PROJECT_ROOT


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("CCR_LOG_LEVEL", "INFO"), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _run_until_signalled(start, stop) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await start()
    await stopping.wait()
    await stop()


def host_command(args) -> None:
    """Just the Functions host, against an existing storage account (AzureWebJobsStorage)."""
    from local_emulator.host.app_settings import load_local_settings
    from local_emulator.host.server import FunctionHost
    from shared.settings import storage_connection
    load_local_settings(Path(args.app_dir))  # Core Tools: the app's settings, the environment winning
    connection = os.environ.get("AzureWebJobsStorage") or storage_connection()
    os.environ["AzureWebJobsStorage"] = connection  # an app setting in Azure; SDK-typed bindings read it
    host = FunctionHost(Path(args.app_dir), connection, port=args.port)

    async def start():
        await host.start()
        print(f"Host listening on {host.url}", flush=True)

    with _profiled(os.environ.get("CCR_HOST_PROFILE")):
        asyncio.run(_run_until_signalled(start, host.stop))


@contextlib.contextmanager
def _profiled(stats_path: str | None):
    """CCR_HOST_PROFILE=<file>: cProfile the host's event loop (its main thread) and write
    the stats there when it stops, to see where a benchmark's time goes. The clock is the
    thread's CPU time, so time spent waiting (or descheduled on a busy machine) is not counted."""
    if not stats_path:
        yield
        return
    import cProfile
    import time
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(stats_path)


def up_command(args) -> None:
    """The whole system (Azurite, every twin, the host) until Ctrl-C or SIGTERM."""
    from local_emulator.stack import FIXED_PORTS, Stack
    from shared.settings import emulator_dir
    ports = {} if args.ephemeral_ports else {**FIXED_PORTS, "host": args.port}
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with Stack(emulator_dir(), Path(args.app_dir), ports=ports, echo_host_log=True) as stack:
        public = {k: v for k, v in stack.settings.items() if k.endswith("_URL")}
        print("local clean room up; settings in " + str(emulator_dir() / "endpoints.json"), flush=True)
        for name, value in sorted(public.items()):
            print(f"  {name} = {value}", flush=True)
        stopping.wait()
        print("stopping...", flush=True)
    print("stopped", flush=True)


def demo_command(args) -> None:
    from local_emulator.covid_scenario import trainer_image_kind
    from local_emulator.demo import DEMO_IMAGE_KIND, run_demo, run_loan_demo
    from local_emulator.loan_scenario import SEED_SCALE_BATCH_ROWS, SEED_SCALE_ROWS
    image_kind = args.image or trainer_image_kind(DEMO_IMAGE_KIND)
    if args.scenario == "loan" and args.seed_scale:
        args.rows, args.batch_rows = SEED_SCALE_ROWS, SEED_SCALE_BATCH_ROWS
    sys.exit(run_loan_demo(args.rows, image_kind=image_kind, batch_rows=args.batch_rows) if args.scenario == "loan"
             else run_demo(image_kind=image_kind))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="Azurite, the twins and the Functions host, in the foreground")
    up.add_argument("--app-dir", default=str(PROJECT_ROOT))
    up.add_argument("--port", type=int, default=7071, help="host HTTP port (0: any free port)")
    up.add_argument("--ephemeral-ports", action="store_true",
                    help="free ports for Azurite and the twins instead of the well-known ones")
    host = commands.add_parser("host", help="only the Functions host, against existing storage")
    host.add_argument("--app-dir", default=str(PROJECT_ROOT))
    host.add_argument("--port", type=int, default=7071)
    demo = commands.add_parser("demo", help="a scenario end to end on the local emulators (default: COVID)")
    demo.add_argument("scenario", nargs="?", choices=("covid", "loan"), default="covid",
                      help="covid: the public COVID sample; loan: a bank and a credit bureau, synthetic data")
    demo.add_argument("--rows", type=_positive_int, default=None,
                      help="loan only: bank customers to generate (default 5000; about 85%% join the bureau)")
    demo.add_argument("--batch-rows", type=_positive_int, default=None,
                      help="loan only: new bank customers in the batch the run continues on (default 2000)")
    demo.add_argument("--seed-scale", action="store_true",
                      help="loan only: the seed benchmark's scale, about 4 M joined rows then 1 M continued "
                           "(tens of minutes on 2 cores)")
    demo.add_argument("--image", choices=("oci", "tarball"), default=None,
                      help="oci (the default, unless CCR_TRAINER_IMAGE names another): the real trainer image, built first if "
                           "absent (about 6 minutes once); tarball: the quick demo, the trainer's source run with "
                           "this venv's Python")
    args = parser.parse_args(argv)
    loan_only = [flag for flag, given in (("--rows", args.rows is not None), ("--batch-rows", args.batch_rows is not None),
                                          ("--seed-scale", args.seed_scale)) if given] if args.command == "demo" else []
    if loan_only and args.scenario != "loan":
        parser.error(f"{', '.join(loan_only)} applies to the loan scenario only")
    if args.command == "demo" and args.seed_scale and (args.rows or args.batch_rows):
        parser.error("--seed-scale sets the rows itself: give it without --rows and --batch-rows")
    os.environ.setdefault("CCR_LOCAL_PROFILE", "1")  # the emulators' settings profile (shared/settings.py)
    _logging()
    {"up": up_command, "host": host_command, "demo": demo_command}[args.command](args)


if __name__ == "__main__":
    main()
