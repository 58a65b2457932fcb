# Two commands for a fresh machine: `make demo` and `make test`.
# Both install what they need (venv, pip, npm) and are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install image-tools browser-tools demo test bench clean

# requirements-dev.txt pulls in the app's, the parties' tool's and the trainer's requirements.
REQUIREMENTS := requirements.txt requirements-cli.txt requirements-dev.txt trainer_container/requirements.txt

$(STAMP): $(REQUIREMENTS) pyproject.toml package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	npm ci --no-audit --no-fund --silent
	touch $(STAMP)

# The trainer image is built without a container engine (tools/trainer_image.py): Debian's
# debootstrap builds its root filesystem, skopeo checks and pushes it. Installed only when absent.
image-tools:
	@command -v debootstrap >/dev/null && command -v skopeo >/dev/null && command -v umoci >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap skopeo umoci)

install: image-tools $(STAMP)

demo: install
	$(PY) -m local_emulator demo

# The browser test of the live run page (tests/run/browser.py) drives Debian's chromium through
# chromium-driver (no browser download: selenium-manager never runs). Installed only when absent.
browser-tools:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

test: install browser-tools
	$(PY) -m pytest

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-checkov node_modules .emulator
