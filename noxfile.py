"""Sessions for building, checking and testing reference artifacts.

`make` fronts these. Run with `--no-venv` (as the Makefile and the container do) to use the
current interpreter as is: sessions then install nothing, which is what an offline image needs.
"""

from __future__ import annotations

import nox

PYTHON = "3.11"
LOCK = "requirements.lock"
LOCK_INPUT = "requirements.in"
PIP_COMPILE_ARGS = [
    "--generate-hashes",
    "--allow-unsafe",
    "--strip-extras",
    "--no-emit-index-url",
    "--no-emit-find-links",
]

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


def install(session: nox.Session) -> None:
    """Install the hash-locked dependencies and the project, unless there is no virtualenv."""
    if session.venv_backend == "none":
        session.log("no virtualenv: using the current interpreter and its packages as they are")
        return
    session.install("--require-hashes", "-r", LOCK)
    session.install("--no-deps", "--no-build-isolation", "-e", ".")


def refgen(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "refgen", *args, *session.posargs)


@nox.session(python=PYTHON)
def generate(session: nox.Session) -> None:
    """Build every spec's reference offline; `-- --spec PATH [--output-dir DIR]` for one."""
    install(session)
    refgen(session, "generate")


@nox.session(python=PYTHON, default=False)
def fetch(session: nox.Session) -> None:
    """Download the pinned model files of every spec (or `-- --spec PATH`) and verify them."""
    install(session)
    refgen(session, "fetch")


@nox.session(name="lock-model", python=PYTHON, default=False)
def lock_model(session: nox.Session) -> None:
    """Record the SHA-256 and BLAKE3 of a spec's model files: `-- --spec PATH [--offline]`."""
    install(session)
    refgen(session, "lock")


@nox.session(python=PYTHON, default=False)
def lock(session: nox.Session) -> None:
    """Recompile requirements.lock (with hashes) from requirements.in; `-- --upgrade` to bump."""
    install(session)
    session.run("pip-compile", *PIP_COMPILE_ARGS, "-o", LOCK, LOCK_INPUT, *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The offline test suite (tiny checkpoints built on the fly; container tests need Docker)."""
    install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """The pre-commit hooks on every file: ruff, ruff format, mypy, hadolint, shellcheck
    (.pre-commit-config.yaml; local hooks running the hash-locked tools, offline)."""
    install(session)
    session.run("pre-commit", "run", "--all-files", "--show-diff-on-failure", *session.posargs)


@nox.session(python=PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """The whole pipeline on a tiny local checkpoint, offline, in under a minute (build/demo)."""
    install(session)
    refgen(session, "demo")


def refgen_verdict(session: nox.Session, command: str) -> None:
    """nox turns every failing exit code into 1; keep refgen's verdict code instead
    (0 bit for bit, 10 within tolerance, 11 not reproduced, 2 could not run)."""
    try:
        refgen(session, command)
    except nox.command.CommandFailed as exc:
        if exc.return_code is not None and exc.return_code != 1:
            raise SystemExit(exc.return_code) from None
        raise


@nox.session(python=PYTHON, default=False)
def verify(session: nox.Session) -> None:
    """Rebuild every spec's committed reference (or `-- --spec PATH`) and compare it with the
    committed one: `-- --json` for a machine-readable report."""
    install(session)
    refgen_verdict(session, "verify")


@nox.session(python=PYTHON, default=False)
def diff(session: nox.Session) -> None:
    """Numeric comparison of two references: `-- A.json B.json [--json] [--atol X] [--rtol Y]`."""
    install(session)
    refgen_verdict(session, "diff")


@nox.session(python=PYTHON, default=False)
def compare(session: nox.Session) -> None:
    """A port's dump against a reference: `-- X.json port.safetensors [--map M.toml] [--prompt N]
    [--html F] [--json F]` (exit 0 within tolerance, 13 diverged, 2 bad input)."""
    install(session)
    refgen_verdict(session, "compare")


@nox.session(python=PYTHON, default=False)
def crosscheck(session: nox.Session) -> None:
    """Build the tiny and a larger checkpoint's reference natively and under emulated Intel and
    AMD CPUs (qemu-user), with the profile and without it (the control); print the table; exit
    11 if a profiled run differs. `-- --cpus A,B --subjects tiny --variants profile,off`,
    `-- --bench ROUNDS` times the forward per variant. Needs qemu-user; 53 min on a busy 2-core
    host."""
    install(session)
    refgen_verdict(session, "crosscheck")


@nox.session(python=PYTHON, default=False)
def zoo(session: nox.Session) -> None:
    """Every causal LM of the installed transformers (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), shrunk,
    built and run through `refgen generate` in float32, bfloat16 and float16, in memory and
    streamed, against a plain from_pretrained forward: prints the table and the counts
    (tests/zoo.py; `-- --types a,b --dtypes float32 --modes memory --work-dir DIR [--resume]`).
    Exits 1 on a difference or a failure refgen alone has."""
    install(session)
    session.run("python", "tests/zoo.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Baseline (the original script's from_pretrained) vs `refgen generate` at the real
    Qwen3-1.7B-Base shape, alternating runs; prints wall time, peak RSS, ratios, hashing speed,
    the no-op time, the phase split and the scaling table. Builds a random-weight 3.4 GB
    checkpoint into .cache/bench once. `-- --runs N`, `-- --no-scaling`; `-- --shape 8b` adds a
    Llama-3-8B-shaped checkpoint (16 GB): ours streamed, accelerate's disk offload, the original
    method under a cap on anonymous memory."""
    install(session)
    session.run("python", "-m", "refgen.bench", *session.posargs)
