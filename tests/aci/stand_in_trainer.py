"""Source of a tiny stand-in trainer image (no torch): prints its pid, where it runs from
and the *names* of its CCR_ environment variables, then behaves as the JSON in CCR_CONTRACT
says: {"attest": true} gets an MAA token through the SKR sidecar and prints its hostdata
claim; {"release": kid} asks the sidecar for that key (prints the HTTP status and a refusal's
body, never the key); then {"child": true} leaves a child process behind; {"lines": n} lines, "ready", {"sleep": s}, exit {"exit": code}."""
MAIN = r'''
import json, os, sys, time, urllib.error, urllib.request
print("pid=%d" % os.getpid(), flush=True)
print("file=%s" % __file__, flush=True)
print("env=" + ",".join(sorted(n for n in os.environ if n.startswith("CCR_"))), flush=True)
spec = json.loads(os.environ.get("CCR_CONTRACT") or "{}")
if spec.get("attest"):
    import base64
    body = json.dumps({"maa_endpoint": os.environ["CCR_MAA_URL"].split("://", 1)[-1],
                       "runtime_data": base64.b64encode(b"{}").decode()}).encode()
    request = urllib.request.Request(os.environ["CCR_SKR_URL"] + "/attest/maa", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            token = json.loads(response.read())["token"]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        print("sidecar_hostdata=" + claims["x-ms-sevsnpvm-hostdata"], flush=True)
    except Exception as error:
        print("sidecar_error=%s" % type(error).__name__, flush=True)
if spec.get("release"):
    body = json.dumps({"maa_endpoint": os.environ["CCR_MAA_URL"].split("://", 1)[-1],   # host names, as
                       "akv_endpoint": os.environ["CCR_KEYVAULT_URL"].split("://", 1)[-1],  # Microsoft's sidecar
                       "kid": spec["release"]}).encode()
    request = urllib.request.Request(os.environ["CCR_SKR_URL"] + "/key/release", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print("release_status=%d" % response.status, flush=True)
            print("released_kty=" + json.loads(json.loads(response.read())["key"])["kty"], flush=True)
    except urllib.error.HTTPError as error:
        print("release_status=%d" % error.code, flush=True)
        print("release_error=" + json.dumps(error.read().decode(errors="replace")), flush=True)   # the reason, one line
if spec.get("child"):
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("child=%d" % child.pid, flush=True)
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
