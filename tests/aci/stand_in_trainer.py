"""Source of a tiny stand-in trainer image (no torch): prints its pid, where it runs from
and the *names* of its CCR_ environment variables, asks the SKR sidecar who it is, then
behaves as the JSON in CCR_CONTRACT says ({"lines": n, "sleep": s, "exit": code})."""
MAIN = r'''
import json, os, sys, time, urllib.request
print("pid=%d" % os.getpid(), flush=True)
print("file=%s" % __file__, flush=True)
print("env=" + ",".join(sorted(n for n in os.environ if n.startswith("CCR_"))), flush=True)
skr = os.environ.get("CCR_SKR_URL")
if skr and os.environ.get("STAND_IN_ASK_SIDECAR") != "no":
    try:
        with urllib.request.urlopen(skr + "/stand-in/hostdata", timeout=5) as response:
            print("sidecar_hostdata=" + response.read().decode(), flush=True)
    except Exception as error:
        print("sidecar_error=%s" % type(error).__name__, flush=True)
spec = json.loads(os.environ.get("CCR_CONTRACT") or "{}")
for i in range(spec.get("lines", 0)):
    print("line %d" % i, flush=True)
print("ready", flush=True)
time.sleep(spec.get("sleep", 0))
sys.exit(spec.get("exit", 0))
'''


def write_stand_in(root):
    """A trainer_container package under `root` whose `python -m trainer_container` is MAIN."""
    package = root / "trainer_container"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""stand-in trainer"""\n')
    (package / "__main__.py").write_text(MAIN)
    return root
