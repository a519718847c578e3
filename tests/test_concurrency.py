"""Concurrent runs never mix a set, and a killed run's leftovers are cleaned by the next run
(issue 19 classes 5 and the SIGKILL item of the minor list).

One inter-process lock per output set (``.X.lock``, filelock) is held from the up-to-date check
to the commit; staged temporaries and backups beside the set, and refgen's temporary folders in
TMPDIR, are removed once no live run can own them (their lock is free), or named.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import filelock
import pytest
from conftest import ROOT, TinySetup, refgen_env, run_refgen

from refgen import atomic, audit, cleanup
from refgen.artifact import Artifact
from refgen.hashing import sha256_file

NAME = "tiny_qwen3_reference"
# In the slowed run's process only: the commit waits 8 s before its renames, after saying so.
SLOW_COMMIT = """
import sys
import time

import refgen.atomic as atomic

_swap = atomic._swap


def slowed(*args):
    sys.stderr.write("test: in the commit\\n")
    sys.stderr.flush()
    time.sleep(8)
    return _swap(*args)


atomic._swap = slowed
"""


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "refgen", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def test_two_runs_of_one_set_never_mix(tiny_copy: TinySetup, tmp_path: Path) -> None:
    """Run 1 is slowed inside its commit; the spec is edited and run 2 starts on it. Run 2
    waits for run 1's lock, then rebuilds from the edited spec: the set on disk is whole (every
    sums line, manifest entry and statement subject match) and is run 2's."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_COMMIT)
    spec = tiny_copy.spec
    out = spec.parent.parent / "out"
    slowed = refgen_env(tiny_copy.hf_home, {"PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}"})
    first, first_lines = _start(["generate", "--spec", str(spec)], slowed)
    deadline = time.monotonic() + 300
    while not any("test: in the commit" in line for line in first_lines):
        assert first.poll() is None, "".join(first_lines)
        assert time.monotonic() < deadline, "run 1 never reached its commit"
        time.sleep(0.05)
    spec.write_text(spec.read_text().replace("Two plus two equals", "Three plus three equals"))
    assert (out / f".{NAME}.lock").exists()  # held by run 1 while it commits
    second, second_lines = _start(["generate", "--spec", str(spec)], refgen_env(tiny_copy.hf_home))
    assert first.wait(timeout=300) == 0, "".join(first_lines)
    assert second.wait(timeout=300) == 0, "".join(second_lines)
    time.sleep(0.2)  # the readers' last lines
    waited = "".join(second_lines)
    assert f"waiting for another refgen run writing {NAME}.json" in waited, waited
    assert "needs a build" in waited  # run 2 checked after run 1 committed, saw its own spec
    artifact = Artifact(out / f"{NAME}.json")
    manifest = audit.read_manifest(artifact.manifest)
    assert audit.check_integrity(artifact, manifest) == []
    assert manifest["spec"]["sha256"] == sha256_file(spec, progress=False)[0]  # run 2's set
    result = subprocess.run(["sha256sum", "-c", f"{NAME}.sha256"], cwd=out, capture_output=True)
    assert result.returncode == 0, result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in artifact.paths().values()
                                                           if p.exists())  # fmt: skip


def test_a_killed_runs_leftovers_are_cleaned(tiny_copy: TinySetup, tmp_path: Path) -> None:
    """Beside the set: a staged temporary and a backup of another inode (a run killed in its
    commit) are removed by the next run that holds the set's lock; the backup only once a
    whole new set is in place. In TMPDIR: a folder whose owner lock is free is removed, one
    whose lock is held stays, one without an owner lock stays and is named."""
    out = tiny_copy.spec.parent.parent / "out"
    run_refgen("generate", "--spec", tiny_copy.spec, hf_home=tiny_copy.hf_home)
    temporary = out / f".{NAME}.manifest.json.k1ll3d00.tmp"
    temporary.write_bytes(b"half a manifest")
    backup = out / f".{NAME}.json.0123456789ab.bak"
    backup.write_bytes(b"the set before the killed commit")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    dead = tmpdir / "refgen-model-dead0000"
    (dead / "sub").mkdir(parents=True)
    (tmpdir / "refgen-model-dead0000.lock").write_bytes(b"")  # its flock died with its run
    alive = tmpdir / "refgen-torch-alive000"
    alive.mkdir()
    unowned = tmpdir / "refgen-verify-nolock00"
    unowned.mkdir()
    other = tmpdir / "not-refgen-model-x"
    other.mkdir()
    with filelock.FileLock(tmpdir / "refgen-torch-alive000.lock"):  # a live run's folder
        result = run_refgen(
            "generate", "--spec", tiny_copy.spec, "--force",
            hf_home=tiny_copy.hf_home, env={"TMPDIR": str(tmpdir)},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"removed {temporary.name}, left by an interrupted run" in result.stderr
    assert f"{backup.name} holds the previous {NAME}.json" in result.stderr
    assert f"removed {backup.name}: the set it was part of is replaced" in result.stderr
    assert "removed 1 temporary folder(s) of killed runs: refgen-model-dead0000" in result.stderr
    assert str(unowned) in result.stderr and "without an owner lock" in result.stderr
    assert not temporary.exists() and not backup.exists()
    assert sorted(p.name for p in tmpdir.iterdir()) == sorted(
        ["refgen-torch-alive000", "refgen-torch-alive000.lock", unowned.name, other.name]
    )
    artifact = Artifact(out / f"{NAME}.json")
    assert audit.check_integrity(artifact, audit.read_manifest(artifact.manifest)) == []


def test_a_backup_of_the_file_in_place_goes_at_once(tmp_path: Path) -> None:
    """A backup that is a second link to the file in place (killed before any rename) holds
    nothing else: removed as soon as the lock is held; the lock file goes with the lock."""
    art = Artifact(tmp_path / "x.json")
    art.reference.write_bytes(b"{}")
    link = tmp_path / ".x.json.0123456789ab.bak"
    os.link(art.reference, link)
    with art.locked():
        assert not link.exists()
        assert art.lock_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_the_lock_file_goes_on_an_interrupt(tmp_path: Path) -> None:
    """remove_all (the signal path) removes a held lock's file: nothing is left in the folder."""
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from refgen import cleanup
with cleanup.held_lock(Path({str(tmp_path / ".x.lock")!r})):
    cleanup.remove_all()
    os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("held", [True, False])
def test_remove_stale_only_takes_free_folders(tmp_path: Path, held: bool) -> None:
    folder = tmp_path / "refgen-model-abcdefgh"
    folder.mkdir()
    (tmp_path / "refgen-model-abcdefgh.lock").touch()  # left by its run, locked or not
    marker = filelock.FileLock(tmp_path / "refgen-model-abcdefgh.lock")
    if held:
        marker.acquire()
    try:
        found = cleanup.remove_stale(tmp_path)
    finally:
        if held:
            marker.release()
    assert folder.exists() == held
    assert found.removed == (() if held else (folder,))
    shutil.rmtree(folder, ignore_errors=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_commit_killed_at_any_step_leaves_a_whole_set(tiny_copy: TinySetup) -> None:
    """A real ``refgen generate`` is SIGKILLed right after each step of its commit in turn
    (refgen.atomic's test-only KILL_AT_VARIABLE), over an old set. The next run takes the set's
    lock, repairs what the kill left and then fails (its model lock is missing): the folder
    holds a whole set, byte for byte the old one until the last rename and the killed run's new
    one after it (which `refgen verify` reproduces bit for bit), with every SHA-256 sum right
    and no leftover; the next run said what it repaired. Without the journal's repair, a kill
    between two renames leaves a mixed set."""
    spec, lock = tiny_copy.spec, tiny_copy.lock
    out = spec.parent.parent / "out"
    run_refgen("generate", "--spec", spec, hf_home=tiny_copy.hf_home)
    old = _files(out)
    spec.write_text(spec.read_text().replace("Two plus two equals", "Three plus three equals"))
    new_spec_sha256 = sha256_file(spec, progress=False)[0]
    artifact = Artifact(out / f"{NAME}.json")
    outcomes: list[str] = []
    for step in itertools.count(1):
        killed = run_refgen(
            "generate", "--spec", spec, hf_home=tiny_copy.hf_home, check=False,
            env={atomic.KILL_AT_VARIABLE: str(step)},
        )  # fmt: skip
        if killed.returncode == 0:  # past the commit's last step
            break
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert f"SIGKILL after commit step {step}: " in killed.stderr, killed.stderr
        journaled = artifact.journal.exists()
        left = sorted(set(os.listdir(out)) - set(old) - {artifact.lock_file.name})
        hidden = lock.rename(lock.with_name("hidden"))
        failed = run_refgen("generate", "--spec", spec, hf_home=tiny_copy.hf_home, check=False)
        hidden.rename(lock)
        assert failed.returncode == 2 and "no model lock" in failed.stderr, failed.stderr
        now = _files(out)
        assert sorted(now) == sorted(old), (step, killed.stderr, failed.stderr)  # no leftover
        sums = subprocess.run(["sha256sum", "-c", artifact.sums.name], cwd=out,
                              capture_output=True, text=True)  # fmt: skip
        assert sums.returncode == 0, (step, sums.stdout, killed.stderr, failed.stderr)
        manifest = audit.read_manifest(artifact.manifest)
        assert audit.check_integrity(artifact, manifest) == []
        outcome = "restored" if now == old else "finished"
        if outcome == "finished":
            assert manifest["spec"]["sha256"] == new_spec_sha256  # the killed run's whole set
        if outcome == "finished" and "finished" not in outcomes:  # once: a rebuild is slow
            verified = run_refgen("verify", "--spec", spec, hf_home=tiny_copy.hf_home)
            assert verified.stdout.startswith("REPRODUCED BIT FOR BIT"), verified.stdout
        if journaled:
            said = {
                "restored": "the previous set is restored from its backups",
                "finished": "so that commit is finished",
            }[outcome]
            assert f"a run was killed while committing {NAME}.json" in failed.stderr
            assert said in failed.stderr, failed.stderr
        for name in left:
            assert f"removed {name}" in failed.stderr or journaled, (name, failed.stderr)
        outcomes.append(outcome)
        for path in out.iterdir():  # the old set again, for the next step
            path.unlink()
        for name, data in old.items():
            (out / name).write_bytes(data)
    # staged x4, backups x4, journal, renames x4, fsync, backups removed x4, journal removed
    assert len(outcomes) == 19, outcomes
    # the old set until the last rename, then the new one: never anything between
    assert outcomes == ["restored"] * 12 + ["finished"] * 7, outcomes


def _journaled_commit(folder: Path) -> tuple[Artifact, dict[str, bytes]]:
    """An old set, then what a commit killed right after its first rename leaves: every
    backup linked, the journal written, the first new file in place, the others staged."""
    art = Artifact(folder / "x.json")
    kinds = ["reference", "manifest", "statement", "sums"]
    art.commit({kind: b"old " + kind.encode() for kind in kinds})
    old = _files(folder)
    entries: list[dict[str, str | int]] = []
    first_staged = folder / "unset"
    for i, kind in enumerate(kinds):
        target, new = art.sibling(kind), b"new " + kind.encode()
        staged = target.with_name(f".{target.name}.abc{i}{atomic.TEMPORARY_SUFFIX}")
        backup = target.with_name(f".{target.name}.0123456789ab{atomic.BACKUP_SUFFIX}")
        os.link(target, backup)
        staged.write_bytes(new)
        first_staged = staged if i == 0 else first_staged
        entries.append({"target": target.name, "staged": staged.name, "backup": backup.name,
                        "inode": backup.stat().st_ino,
                        "sha256": hashlib.sha256(new).hexdigest()})  # fmt: skip
    record = {"refgen_commit": atomic.JOURNAL_FORMAT, "files": entries, "remove": []}
    art.journal.write_text(json.dumps(record))
    os.replace(first_staged, art.reference)
    return art, old


@pytest.mark.parametrize("repair_killed", [False, True])
def test_a_journal_restores_the_previous_set(tmp_path: Path, repair_killed: bool) -> None:
    """After the first rename, the previous set is put back (and every temporary, backup and
    the journal go); also when a repair was killed after moving the first file back."""
    art, old = _journaled_commit(tmp_path)
    if repair_killed:
        os.replace(next(tmp_path.glob(".x.json.*.bak")), art.reference)
    with art.locked():
        pass
    assert _files(tmp_path) == old


@pytest.mark.parametrize("damage", ["outside", "backup gone"])
def test_a_journal_that_proves_nothing_touches_nothing(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal naming a file outside the set, or a commit whose previous and new files are
    not all there: nothing is removed or renamed, each file left is named, and the lock is the
    only name that comes and goes."""
    art, _ = _journaled_commit(tmp_path)
    if damage == "outside":
        record = json.loads(art.journal.read_text())
        record["files"][1]["backup"] = "../elsewhere.bak"
        art.journal.write_text(json.dumps(record))
    else:
        next(tmp_path.glob(".x.json.*.bak")).unlink()
        next(tmp_path.glob(".x.manifest.json.*.tmp")).unlink()
    before = _files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="refgen"), art.locked():
        pass
    assert _files(tmp_path) == before
    named = caplog.text.split("these are kept: ", 1)[1]
    assert all(name in named for name in before if name.startswith(".")), caplog.text


def test_verify_names_an_unrepaired_commit(tmp_path: Path) -> None:
    """Until a run under the set's lock repairs it, a killed commit's journal is an integrity
    finding (the set may be mixed); once repaired, it is not."""
    art, _ = _journaled_commit(tmp_path)
    assert art.journal.name in {f.subject for f in audit.check_integrity(art, None)}
    with art.locked():
        pass
    assert art.journal.name not in {f.subject for f in audit.check_integrity(art, None)}
