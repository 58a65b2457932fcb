"""Runs an ACI twin in its own process (for the crash test): prints its URL, serves until killed.

    python -m tests.aci.twin_process STATE_DIR IMAGES_DIR CERT_CHAIN_PEM   (token in ACI_TWIN_TOKEN)
"""
import os
import ssl
import sys
import threading
from pathlib import Path

from local_emulator.aci import AciTwin

state_dir, images_dir, cert_chain = sys.argv[1:4]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert_chain)
twin = AciTwin(Path(state_dir), Path(images_dir), context, os.environ["ACI_TWIN_TOKEN"], None).start()
print(twin.url, flush=True)
threading.Event().wait()
