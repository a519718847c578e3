"""Print the table case -> exit code -> message -> files changed for test_hostile's CLI cases,
then the signal cases (SIGHUP, SIGQUIT, SIGTERM, SIGINT mid-forward) and SIGKILL inside the
commit (the next run repairs the set).

    PYTHONPATH=. python tests/hostile_table.py [--refgen DIR] [--no-signals]

``--refgen DIR`` runs the cases against the refgen sources in DIR (e.g. an older checkout), to
show what each case did before; the cases themselves come from tests/test_hostile.py.
"Files changed" compares the whole temporary tree (spec, lock, model cache, previous artifact)
before and after: ``none`` is the promise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest
import test_hostile
import test_hostile_inputs
import test_signals

from refgen import atomic, tiny


def changed(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The paths added, removed or modified between two snapshots, or ``none``."""
    paths = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return ", ".join(paths)[:120] if paths else "none"


def row(name: str, code: int, stderr: str, files: str) -> str:
    lines = stderr.splitlines()
    shown = next((x for x in lines if "error" in x.lower()), lines[-1] if lines else "")
    if "Traceback" in stderr:
        shown = "Traceback ... " + (lines[-1] if lines else "")
    shown = shown.replace("|", "\\|")[:160]
    return f"| {name} | {code} | `{shown}` | {files} |"


def _copy(setup: conftest.TinySetup, work: Path) -> conftest.TinySetup:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(setup.hf_home.parent, work / "tiny", symlinks=True)
    old = setup.checkpoint
    snapshot = work / "tiny" / old.snapshot.relative_to(setup.hf_home.parent)
    return conftest.TinySetup(
        work / "tiny" / "hf-home",
        tiny.TinyCheckpoint(old.repo, old.revision, snapshot),
        work / "tiny" / "specs" / setup.spec.name,
    )


def signal_row(
    setup: conftest.TinySetup, work: Path, sig: signal.Signals, env: dict[str, str]
) -> str:
    """generate with every forward slowed (test_signals' hook), *sig* once the forward runs."""
    copy = _copy(setup, work)
    test_hostile.Case.with_old_artifact(copy, work)
    hooks = work / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(test_signals.SLOW_FORWARD)
    path = env.get("PYTHONPATH", str(conftest.ROOT))
    run_env = conftest.refgen_env(copy.hf_home, {"PYTHONPATH": f"{hooks}{os.pathsep}{path}"})
    before = test_hostile.snapshot(work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "refgen", "generate", "--spec", str(copy.spec)],
        env=run_env, cwd=work, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("refgen: forward:"):
            break
    time.sleep(1.0)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(lines) + rest
    after = test_hostile.snapshot(work)
    shutil.rmtree(hooks)
    after = {k: v for k, v in after.items() if not k.startswith("hooks")}
    before = {k: v for k, v in before.items() if not k.startswith("hooks")}
    return row(f"{sig.name} mid-forward", proc.returncode, stderr, changed(before, after))


def sigkill_row(setup: conftest.TinySetup, work: Path, step: int, env: dict[str, str]) -> str:
    """generate SIGKILLed after commit step *step* (refgen.atomic's test-only hook), then the
    next run, refused once it holds the set's lock (its model lock is missing): its exit code,
    the line that names the repair, and what changed since before the killed run."""
    copy = _copy(setup, work)
    test_hostile.Case.with_old_artifact(copy, work)
    before = test_hostile.snapshot(work)
    killed = conftest.run_refgen(
        "generate", "--spec", copy.spec, hf_home=copy.hf_home, cwd=work, check=False,
        env={**env, atomic.KILL_AT_VARIABLE: str(step)},
    )  # fmt: skip
    hidden = copy.lock.rename(copy.lock.with_name("hidden"))
    result = conftest.run_refgen(
        "generate", "--spec", copy.spec, hf_home=copy.hf_home, cwd=work, check=False, env=env
    )
    hidden.rename(copy.lock)
    said = next((x for x in result.stderr.splitlines() if "killed while committing" in x), "")
    name = f"SIGKILL after commit step {step} (exit {killed.returncode}), then the next run"
    return row(
        name, result.returncode, said or result.stderr, changed(before, test_hostile.snapshot(work))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refgen", type=Path, help="run these refgen sources (PYTHONPATH)")
    parser.add_argument("--no-signals", action="store_true", help="only test_hostile's cases")
    args = parser.parse_args()
    env = {"PYTHONPATH": str(args.refgen.resolve())} if args.refgen else {}
    with tempfile.TemporaryDirectory() as tmp:
        setup = conftest._make_setup(Path(tmp) / "master")
        print("| case | exit | message (first error line) | files changed |")
        print("| --- | ---: | --- | --- |")
        for name, prepare, _, _, extra in [*test_hostile.CASES, *test_hostile_inputs.CASES]:
            work = Path(tmp) / "case"
            copy = _copy(setup, work)
            case = test_hostile.Case.with_old_artifact(copy, work)
            cli_args = prepare(case)
            run_env = dict(extra)
            if run_env.get("HF_HUB_CACHE") == "@file":
                run_env["HF_HUB_CACHE"] = str(work / "cache-file")
                Path(run_env["HF_HUB_CACHE"]).write_text("a file\n")
            before = test_hostile.snapshot(work)
            # cwd outside the checkout: `python -m` puts the cwd first on sys.path
            try:
                result = conftest.run_refgen(
                    *cli_args, hf_home=copy.hf_home, env={**run_env, **env}, cwd=work,
                    check=False, timeout=test_hostile.TIMEOUT,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                print(f"| {name} | - | **hung: killed after {test_hostile.TIMEOUT} s** | |")
                continue
            files = changed(before, test_hostile.snapshot(work))
            print(row(name, result.returncode, result.stderr, files), flush=True)
        if not args.no_signals:
            for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM, signal.SIGINT):
                print(signal_row(setup, Path(tmp) / "signal", sig, env), flush=True)
            # after the first rename, and after the third of four (test_concurrency: every step)
            for step in (10, 12):
                print(sigkill_row(setup, Path(tmp) / "sigkill", step, env), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
