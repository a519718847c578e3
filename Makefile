# Fronts for the nox sessions. `make help` lists them.
# The project venv (.venv) holds the hash-locked dependencies; nox runs in it with --no-venv,
# so nothing is installed twice.

PYTHON ?= python3
VENV := .venv
NOX := $(VENV)/bin/nox --no-venv
STAMP := $(VENV)/.installed
# Sessions run tools (ruff, pytest, ...) by name: find the venv's first.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup reference reference-native fetch test lint demo verify verify-native bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP) ## create .venv with the hash-locked dependencies

reference: fetch reference-native ## fetch + verify the model, then build every spec's reference

reference-native: $(STAMP) ## build every spec's reference on this host (model must be fetched)
	$(NOX) -s generate

fetch: $(STAMP) ## download and verify the pinned model files of every spec (network)
	$(NOX) -s fetch

test: $(STAMP) ## run the test suite
	$(NOX) -s tests

lint: $(STAMP) ## ruff, mypy, hadolint
	$(NOX) -s lint

demo: $(STAMP) ## the whole pipeline on a tiny local checkpoint, offline (build/demo)
	$(NOX) -s demo

verify: ## rebuild every committed reference in the pinned image and compare (exit 0/10/11)
	docker/verify.sh

verify-native: $(STAMP) ## the same on this host, without the image
	$(NOX) -s verify

# --- issue 5 (benchmark) ---
bench: $(STAMP) ## baseline vs generate at the real shape (random 3.4 GB checkpoint in .cache/bench)
	$(NOX) -s bench

# --- issue 3 (container image) ---
IMAGE ?= refgen:local
.PHONY: image reference-container

image: $(STAMP) ## build the offline image: locked wheels + verified models (docker/build.sh)
	PYTHON=$(abspath $(VENV))/bin/python IMAGE=$(IMAGE) docker/build.sh

reference-container: image ## build every spec's reference in the image, offline, into scripts/
	IMAGE=$(IMAGE) docker/run.sh scripts
