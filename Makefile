# Fronts for the nox sessions and the container scripts. `make help` lists them.
# The project venv (.venv) holds the hash-locked dependencies; nox runs in it with --no-venv,
# so nothing is installed twice.

PYTHON ?= python3
VENV := .venv
NOX := $(VENV)/bin/nox --no-venv
STAMP := $(VENV)/.installed
IMAGE ?= refgen:local
# Sessions run tools (ruff, pytest, ...) by name: find the venv's first.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup reference reference-container reference-native image fetch verify \
	verify-native test lint demo bench crosscheck zoo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --require-hashes -r requirements.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP) ## create .venv with the hash-locked dependencies

reference: fetch reference-container ## fetch + verify the model (network once), build the image, generate in it

fetch: $(STAMP) ## download and verify the pinned model files of every spec (network)
	$(NOX) -s fetch

image: $(STAMP) ## build the offline image: locked wheels + verified models (docker/build.sh)
	PYTHON=$(abspath $(VENV))/bin/python IMAGE=$(IMAGE) docker/build.sh

reference-container: image ## build every spec's reference in the image, offline, into scripts/
	IMAGE=$(IMAGE) docker/run.sh scripts

reference-native: $(STAMP) ## build every spec's reference on this host, without the image
	$(NOX) -s generate

verify: image ## rebuild every committed reference in the image and compare (exit 0/10/11)
	IMAGE=$(IMAGE) docker/verify.sh

verify-native: $(STAMP) ## the same on this host, without the image
	$(NOX) -s verify

test: $(STAMP) ## run the test suite
	$(NOX) -s tests

lint: $(STAMP) ## pre-commit hooks on every file: ruff, ruff format, mypy, hadolint, shellcheck
	$(NOX) -s lint

demo: $(STAMP) ## the whole pipeline on a tiny local checkpoint, offline (build/demo)
	$(NOX) -s demo

bench: $(STAMP) ## baseline vs generate at the real shape (random 3.4 GB checkpoint in .cache/bench); BENCH_ARGS="--shape 8b" adds a model bigger than memory
	$(NOX) -s bench -- $(BENCH_ARGS)

crosscheck: $(STAMP) ## same bytes under emulated Intel/AMD CPUs (qemu-user), profile on and off
	$(NOX) -s crosscheck

zoo: $(STAMP) ## every causal LM of transformers' mapping, tiny, through generate vs from_pretrained (ZOO_ARGS="--types a,b")
	$(NOX) -s zoo -- $(ZOO_ARGS)
