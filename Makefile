# Two commands for a fresh machine: `make demo` and `make test`.
# Both install what they need (venv, pip, npm) and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install image-tools image-build-tools trainer-image browser-tools demo test bench clean

# requirements-dev.txt pulls in the app's, the parties' tool's and the trainer's requirements.
REQUIREMENTS := requirements.txt requirements-cli.txt requirements-dev.txt trainer_container/requirements.txt

$(STAMP): $(REQUIREMENTS) pyproject.toml package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	npm ci --no-audit --no-fund --silent
	touch $(STAMP)

# skopeo checks the OCI images tools/oci_image.py writes (tests) and pushes them. Installed only when absent.
image-tools:
	@command -v skopeo >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo >/dev/null)

install: image-tools $(STAMP)

# The real trainer image (tools/trainer_image.py) is built without a container engine: Debian's
# debootstrap builds its root filesystem. Installed only when absent.
image-build-tools:
	@command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null)

# About 6 minutes the first time, cached per machine (~/.cache/ccr/images); `make demo` builds it too.
trainer-image: install image-build-tools
	$(PY) -m tools.trainer_image build

# The demo runs on the real trainer image (built first when absent: about 6 minutes once);
# `make demo DEMO_IMAGE=tarball` is the quick demo on the trainer's source tarball.
DEMO_IMAGE ?= $(or $(CCR_TRAINER_IMAGE),oci)
demo: install $(if $(filter oci,$(DEMO_IMAGE)),image-build-tools)
	$(PY) -m local_emulator demo --image $(DEMO_IMAGE)

# The browser test of the live run page (tests/run/browser.py) drives Debian's chromium through
# chromium-driver (no browser download: selenium-manager never runs). Installed only when absent.
browser-tools:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# Two workers, a test file each at a time (module fixtures stay whole): the suite mostly waits on
# processes and HTTP, so two share two cores well.
test: install browser-tools
	$(PY) -m pytest -n 2 --dist loadfile

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-checkov node_modules .emulator
