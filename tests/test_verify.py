"""The auditor's flow on the tiny checkpoint: verdicts, tamper cases, interruption, determinism.

Every generator run is a real ``python -m refgen generate`` process (the determinism profile must
be applied before torch is imported), on a tiny Qwen3 checkpoint built once per module. The
processes run from a snapshot of the project's sources taken once per module, so that the
generator identity recorded in each manifest cannot change half-way through the module (it is a
hash of the sources) and every byte-for-byte comparison compares like with like.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TinySetup, make_setup, refgen_env, run

from refgen import audit, cli, provenance, verify
from refgen.artifact import Artifact
from refgen.errors import ArtifactError
from refgen.spec import load_spec

REF = "tiny_qwen3_reference.json"
MANIFEST = "tiny_qwen3_reference.manifest.json"
SUMS = "tiny_qwen3_reference.sha256"
SPEC = "specs/tiny-qwen3.toml"
LOCK = "specs/tiny-qwen3.lock.json"


def copy_project(dest: Path) -> Path:
    """The generator's sources and lock, as a checkout elsewhere would have them (no .git)."""
    shutil.copytree(ROOT / "refgen", dest / "refgen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.lock", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def base_env(hf_home: Path, project: Path, **extra: str) -> dict[str, str]:
    # the source snapshot first on the path, and a private temp folder: what the processes
    # leave there is theirs alone
    return refgen_env(
        hf_home, {"PYTHONPATH": str(project), "TMPDIR": str(project / "tmp"), **extra}
    )


@dataclass(frozen=True)
class Workspace:
    """A folder with specs/ and the generated artifact, the HF cache it was made from and the
    snapshot of the project's sources that made it."""

    root: Path
    hf_home: Path
    project: Path

    @property
    def spec(self) -> Path:
        return self.root / SPEC

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(self.hf_home, self.project, **extra)

    def copy(self, dest: Path, with_cache: bool = False) -> Workspace:
        shutil.copytree(self.root, dest / "ws")
        hf_home = self.hf_home
        if with_cache:
            hf_home = dest / "hf-home"
            shutil.copytree(self.hf_home, hf_home, symlinks=True)
        return Workspace(dest / "ws", hf_home, self.project)

    def verify(self, *args: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        cmd = [sys.executable, "-m", "refgen", "verify", "--spec", str(self.spec), "--json", *args]
        proc = run(cmd, self.env(**kw), cwd=self.root, check=False)
        assert proc.returncode in (0, 10, 11), proc.stderr
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Tiny checkpoint in a private HF cache, its spec and lock, and one generated artifact."""
    base = tmp_path_factory.mktemp("verify")
    project = copy_project(base / "project")
    (project / "tmp").mkdir()
    root = base / "ws"
    hf_home = base / "hf-home"
    env = base_env(hf_home, project)
    make_setup(hf_home, root / "specs", f"../{REF}", env=env)
    run([sys.executable, "-m", "refgen", "generate", "--spec", str(root / SPEC)], env, cwd=project)
    return Workspace(root, hf_home, project)


@pytest.fixture
def in_project(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """In-process calls see the module's source snapshot as the generator (like its processes)."""
    from refgen import manifest as manifest_mod

    monkeypatch.setattr(manifest_mod, "PACKAGE_ROOT", workspace.project / "refgen")
    monkeypatch.setattr(manifest_mod, "PROJECT_ROOT", workspace.project)
    monkeypatch.delenv("REFGEN_REQUIREMENTS_LOCK", raising=False)
    monkeypatch.delenv("REFGEN_CONTAINER_IMAGE", raising=False)
    return workspace


def resign(ws: Workspace, doc: dict[str, Any]) -> None:
    """Write a changed reference *with* a consistent manifest and sums file, as a publisher whose
    host produced other numbers would: only the rebuild can then tell the difference."""
    from refgen.generate import dump_reference
    from refgen.hashing import sha256_bytes
    from refgen.manifest import dump, sha256sums

    data = dump_reference(doc)
    (ws.root / REF).write_bytes(data)
    manifest = json.loads((ws.root / MANIFEST).read_bytes())
    manifest["outputs"] = [{"path": REF, "sha256": sha256_bytes(data), "size": len(data)}]
    manifest_bytes = dump(manifest)
    (ws.root / MANIFEST).write_bytes(manifest_bytes)
    files = {REF: data, MANIFEST: manifest_bytes}
    statement = Artifact(ws.root / REF).statement
    if statement.is_file():  # re-attest too, as the publisher's generator would have
        files[statement.name] = provenance.statement_bytes(
            manifest, manifest_name=MANIFEST, manifest_sha256=sha256_bytes(manifest_bytes)
        )
        statement.write_bytes(files[statement.name])
    listed = [line.split("  ", 1)[1] for line in (ws.root / SUMS).read_text().splitlines()]
    (ws.root / SUMS).write_bytes(sha256sums({name: files[name] for name in listed}))


def load_ref(ws: Workspace) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ws.root / REF).read_bytes())
    return doc


def subjects(findings: list[dict[str, Any]]) -> list[str]:
    """The files named, once each (a file can fail against the manifest and the sums file)."""
    return list(dict.fromkeys(f["subject"] for f in findings))


# --- verdicts -----------------------------------------------------------------------------------


def test_fresh_artifact_is_reproduced_bit_for_bit(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace.copy(tmp_path)
    cmd = [sys.executable, "-m", "refgen", "verify", "--spec", str(ws.spec)]
    proc = run(cmd, ws.env(), cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    sha = json.loads((ws.root / MANIFEST).read_bytes())["outputs"][0]["sha256"]
    assert first == f"REPRODUCED BIT FOR BIT: {REF} - the rebuild has the same SHA-256 {sha}"
    assert "Integrity of the committed files: ok" in proc.stdout
    assert "Inputs now vs. the manifest: ok" in proc.stdout


def test_float_off_by_1e_7_is_within_tolerance(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace.copy(tmp_path)
    doc = load_ref(ws)
    original = doc["test_cases"][1]["top_10"][3]["logit"]
    doc["test_cases"][1]["top_10"][3]["logit"] = original + 1e-7
    resign(ws, doc)

    code, report = ws.verify()

    assert code == 10, report["summary"]
    assert report["verdict"] == "WITHIN_TOLERANCE"
    assert report["summary"].startswith("REPRODUCED WITHIN TOLERANCE")
    assert "test_cases[1].top_10[3].logit" in report["summary"]
    stats = {f["field"]: f for f in report["comparison"]["fields"]}
    assert stats["top_10.logit"]["max_abs_path"] == "test_cases[1].top_10[3].logit"
    assert stats["top_10.logit"]["max_abs"] == pytest.approx(abs(original + 1e-7 - original))
    assert stats["last_residual_f32"]["max_abs"] == 0.0
    cases = {c["case"]: {f["field"]: f for f in c["fields"]} for c in report["comparison"]["cases"]}
    assert cases[1]["top_10.logit"]["max_abs"] > 0
    assert cases[0]["top_10.logit"]["max_abs"] == cases[2]["top_10.logit"]["max_abs"] == 0.0


def test_swapped_top_k_entries_are_not_reproduced_and_named(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace.copy(tmp_path)
    doc = load_ref(ws)
    top = doc["test_cases"][0]["top_10"]
    a, b = top[2]["index"], top[3]["index"]
    top[2], top[3] = top[3], top[2]
    resign(ws, doc)

    code, report = ws.verify()

    assert code == 11
    assert report["integrity"] == [] and report["inputs"] == []
    swaps = [d for d in report["comparison"]["differences"] if d["kind"] == "swap"]
    assert [d["path"] for d in swaps] == ["test_cases[0].top_10[2]"]
    assert f"index {b} and index {a}" in swaps[0]["detail"]
    assert "test_cases[0].top_10[2]" in report["summary"]


# --- tamper and fault cases ---------------------------------------------------------------------


def _flip_digit(data: bytes, after: bytes) -> bytes:
    """Change the first decimal digit of the first number after ``after`` (JSON stays valid)."""
    pos = data.index(b".", data.index(after)) + 1
    digit = data[pos : pos + 1]
    assert digit.isdigit()
    return data[:pos] + (b"7" if digit != b"7" else b"3") + data[pos + 1 :]


def tamper_json_byte(ws: Workspace) -> None:
    path = ws.root / REF
    path.write_bytes(_flip_digit(path.read_bytes(), b'"last_residual_f32": ['))


def tamper_manifest_byte(ws: Workspace) -> None:
    path = ws.root / MANIFEST
    data = path.read_bytes()
    pos = data.index(b'"system": "') + len(b'"system": "')
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])


def tamper_weight_byte(ws: Workspace) -> None:
    snapshot = next((ws.hf_home / "hub").glob("models--*/snapshots/*"))
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x40
    blob.write_bytes(bytes(data))


def tamper_remove_test_case(ws: Workspace) -> None:
    doc = load_ref(ws)
    del doc["test_cases"][2]
    resign(ws, doc)


def tamper_edit_prompt(ws: Workspace) -> None:
    spec = ws.spec
    spec.write_text(spec.read_text().replace('"Two plus two equals"', '"Two plus two makes"'))


def tamper_edit_lock(ws: Workspace) -> None:
    lock = ws.root / LOCK
    data = json.loads(lock.read_text())
    entry = next(f for f in data["files"] if f["path"] == "tokenizer.json")
    entry["sha256"] = "0" * 64
    lock.write_text(json.dumps(data, indent=2) + "\n")


TAMPERS = {
    # name: (tamper, needs its own HF cache, expected integrity subjects, expected input subjects)
    "json-byte": (tamper_json_byte, False, [REF], []),
    "manifest-byte": (tamper_manifest_byte, False, [MANIFEST], []),
    "weight-byte": (tamper_weight_byte, True, [], ["model file model.safetensors"]),
    "test-case-removed": (tamper_remove_test_case, False, [], []),
    "prompt-edited": (tamper_edit_prompt, False, [], ["spec tiny-qwen3.toml"]),
    "lock-edited": (tamper_edit_lock, False, [], ["model lock tiny-qwen3.lock.json"]),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampering_is_caught_and_named(workspace: Workspace, tmp_path: Path, case: str) -> None:
    tamper, own_cache, integrity, inputs = TAMPERS[case]
    ws = workspace.copy(tmp_path, with_cache=own_cache)
    tamper(ws)

    code, report = ws.verify()

    assert code == 11, report["summary"]
    assert report["verdict"] == "NOT_REPRODUCED"
    assert subjects(report["integrity"]) == integrity
    assert subjects(report["inputs"]) == inputs
    for name in integrity + inputs:
        assert name in report["summary"]
    if case == "json-byte":
        diffs = report["comparison"]["differences"]
        assert diffs and diffs[0]["path"] == "test_cases[0].last_residual_f32[0]"
    if case == "test-case-removed":
        assert report["comparison"]["differences"][0]["path"] == "test_cases"
        assert "test_cases[2]" in [d["path"] for d in report["comparison"]["differences"]]
    if case == "prompt-edited":
        assert "run.prompts[1]" in report["inputs"][0]["detail"]
        paths = [d["path"] for d in report["comparison"]["differences"]]
        assert "test_cases[1].prompt" in paths
    if case == "lock-edited":
        assert "tokenizer.json" in report["inputs"][0]["detail"]
    if case in ("weight-byte", "lock-edited"):
        # the generator refuses to run on files that do not match the lock, naming the file
        assert report["rebuild_error"] and "IntegrityError" not in report["rebuild_error"]
        expected = "model.safetensors" if case == "weight-byte" else "tokenizer.json"
        assert expected in report["rebuild_error"]
        assert report["comparison"] is None


def test_changed_requirements_lock_is_named_even_when_bytes_match(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace.copy(tmp_path)
    other = tmp_path / "requirements.lock"
    other.write_bytes((ws.project / "requirements.lock").read_bytes() + b"# edited\n")
    code, report = ws.verify(REFGEN_REQUIREMENTS_LOCK=str(other))
    assert code == 11
    assert subjects(report["inputs"]) == ["requirements.lock"]
    assert report["comparison"]["verdict"] == "IDENTICAL"
    assert "the rebuild itself was reproduced bit for bit" in report["summary"]


def test_provenance_statement_is_checked(workspace: Workspace, tmp_path: Path) -> None:
    """A statement next to the artifact must attest what the manifest records."""
    ws = workspace.copy(tmp_path)
    manifest = json.loads((ws.root / MANIFEST).read_bytes())
    statement = provenance.build_statement(manifest, environ={})
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    weights = next(d for d in deps if d.get("uri", "").endswith("/model.safetensors"))
    weights["digest"]["sha256"] = "0" * 64  # claims other weights than the manifest
    path = Artifact(ws.root / REF).statement
    path.write_bytes(provenance.render(statement))

    code, report = ws.verify()

    assert code == 11
    # (when the generator also lists the statement in the sums file, that check fails too)
    assert subjects(report["integrity"]) == [path.name]
    details = [f["detail"] for f in report["integrity"]]
    assert "resolvedDependencies differ from the manifest" in details
    assert path.name in report["summary"]


def test_container_image_is_an_input(workspace: Workspace, tmp_path: Path) -> None:
    """An artifact made in an image: verified elsewhere it is a note, in another image a finding."""
    ws = workspace.copy(tmp_path)
    made_in = "sha256:" + "a" * 64
    cmd = [sys.executable, "-m", "refgen", "generate", "--spec", str(ws.spec), "--force"]
    run(
        cmd,
        ws.env(REFGEN_CONTAINER_IMAGE=made_in, REFGEN_IMAGE_LAYERS='["sha256:' + "b" * 64 + '"]'),
        cwd=ws.project,
    )
    assert json.loads((ws.root / MANIFEST).read_bytes())["container"]["image_id"] == made_in

    code, report = ws.verify()
    assert code == 0, report["summary"]
    assert any(made_in in note and "outside any image" in note for note in report["notes"])

    code, report = ws.verify(REFGEN_CONTAINER_IMAGE="sha256:" + "c" * 64)
    assert code == 11
    assert subjects(report["inputs"]) == ["container image"]
    assert made_in in report["inputs"][0]["detail"]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.parametrize(
    ("sig", "group"),
    [
        (signal.SIGTERM, False),
        (signal.SIGINT, False),
        # Ctrl-C at a terminal: the whole process group, the rebuild child included, gets SIGINT,
        # and then the parent's SIGTERM while the child is already cleaning up
        (signal.SIGINT, True),
    ],
)
def test_interrupted_verify_leaves_nothing_behind(
    workspace: Workspace, tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    ws = workspace.copy(tmp_path)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    cmd = [sys.executable, "-m", "refgen", "verify", "--spec", str(ws.spec)]
    proc = subprocess.Popen(
        cmd,
        env=ws.env(TMPDIR=str(tmpdir)),
        cwd=ws.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )
    deadline = time.monotonic() + 120
    # wait until the rebuild is under way: its temporary folder exists and the generator runs
    while not (
        list(tmpdir.glob(verify.REBUILD_PREFIX + "*")) and _processes_mentioning(str(tmpdir))
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the rebuild never started"
        time.sleep(0.05)
    time.sleep(0.5)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "interrupted" in err
    assert list(tmpdir.iterdir()) == []
    assert _processes_mentioning(str(tmpdir)) == []
    # the artifact under verification is untouched
    assert (ws.root / REF).read_bytes() == (workspace.root / REF).read_bytes()


# --- incremental runs ---------------------------------------------------------------------------


def test_up_to_date(in_project: Workspace, tmp_path: Path) -> None:
    workspace = in_project
    ws = workspace.copy(tmp_path)
    spec = load_spec(ws.spec)
    manifest = ws.root / MANIFEST
    status = audit.is_up_to_date(spec, manifest)
    assert status == audit.UpToDate(True, ()) and status

    tamper_edit_prompt(ws)
    stale = audit.is_up_to_date(load_spec(ws.spec), manifest)
    assert not stale.current
    assert any("spec tiny-qwen3.toml" in r and "run.prompts[1]" in r for r in stale.reasons)

    ws = workspace.copy(tmp_path / "b")
    tamper_edit_lock(ws)
    reasons = audit.is_up_to_date(load_spec(ws.spec), ws.root / MANIFEST).reasons
    assert any("model lock tiny-qwen3.lock.json" in r for r in reasons)

    ws = workspace.copy(tmp_path / "c")
    (ws.root / REF).unlink()
    reasons = audit.is_up_to_date(load_spec(ws.spec), ws.root / MANIFEST).reasons
    assert any(REF in r and "missing" in r for r in reasons)

    (ws.root / MANIFEST).unlink()
    assert not audit.is_up_to_date(load_spec(ws.spec), ws.root / MANIFEST).current


def test_up_to_date_notices_generator_changes(
    in_project: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refgen import manifest as manifest_mod

    workspace = in_project
    real = manifest_mod.generator_identity()
    monkeypatch.setattr(
        manifest_mod, "generator_identity", lambda: {**real, "sources_sha256": "0" * 64}
    )
    ws = workspace.copy(tmp_path)
    status = audit.is_up_to_date(load_spec(ws.spec), ws.root / MANIFEST)
    assert status.reasons == ("generator sources changed since the manifest was written",)


# --- provenance and diff on a real artifact ------------------------------------------------------


def test_statement_of_a_real_manifest_is_valid(workspace: Workspace) -> None:
    from test_provenance import validate

    manifest = json.loads((workspace.root / MANIFEST).read_bytes())
    statement = provenance.build_statement(manifest, environ={})
    validate(statement)
    ref_sha = manifest["outputs"][0]["sha256"]
    assert statement["subject"] == [{"name": REF, "digest": {"sha256": ref_sha}}]
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    uris = {d.get("uri") for d in deps}
    for f in manifest["model"]["files"]:
        assert (
            f"hf://{manifest['model']['repo']}@{manifest['model']['revision']}/{f['path']}" in uris
        )


def test_diff_between_two_real_references(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = workspace.copy(tmp_path)
    doc = load_ref(ws)
    changed = copy.deepcopy(doc)
    changed["test_cases"][2]["last_residual_f32"][7] += 2e-7
    other = tmp_path / "other.json"
    from refgen.generate import dump_reference

    other.write_bytes(dump_reference(changed))
    assert (
        cli.main(["diff", str(ws.root / REF), str(other), "--spec", str(ws.spec), "--json"]) == 10
    )
    report = json.loads(capsys.readouterr().out)
    stats = {f["field"]: f for f in report["fields"]}
    assert stats["last_residual_f32"]["max_abs_path"] == "test_cases[2].last_residual_f32[7]"


# --- determinism evidence -----------------------------------------------------------------------


def _cores() -> tuple[str, str]:
    cores = sorted(os.sched_getaffinity(0))
    return str(cores[0]), ",".join(map(str, cores))


def _conditions() -> dict[str, dict[str, Any]]:
    one, every = _cores()
    return {
        "taskset-one-core": {"prefix": ["taskset", "-c", one]},
        "taskset-all-cores": {"prefix": ["taskset", "-c", every]},
        "caller-threads": {"env": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}},
        # the generator makes idle OpenMP threads sleep (refgen.determinism.WAIT_POLICY)
        "caller-omp-spinning": {"env": {"OMP_WAIT_POLICY": "ACTIVE"}},
        "aten-default": {"env": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "ALL"}},
        "aten-avx512": {"env": {"ATEN_CPU_CAPABILITY": "avx512"}},
        "mkl-cbwr-auto": {"env": {"MKL_CBWR": "AUTO"}},
        "umask-077": {"prefix": ["sh", "-c", 'umask 077 && exec "$@"', "sh"]},
        "tz-lang-home": {
            "env": {"TZ": "Pacific/Chatham", "LANG": "tr_TR.UTF-8", "LC_ALL": "tr_TR.UTF-8"},
            "home": True,
        },
        "other-cwd": {"cwd": True},
        "repo-copy": {"repo_copy": True},
    }


@pytest.mark.parametrize("condition", sorted(_conditions()))
def test_generator_bytes_do_not_depend_on_the_caller(
    workspace: Workspace, tmp_path: Path, condition: str
) -> None:
    how = _conditions()[condition]
    out = tmp_path / "out"
    env = workspace.env(**how.get("env", {}))
    cwd = workspace.project
    if how.get("home"):
        env["HOME"] = str(tmp_path / "home")
    if how.get("cwd"):
        cwd = tmp_path
    if how.get("repo_copy"):
        cwd = copy_project(tmp_path / "elsewhere" / "project")
        env["PYTHONPATH"] = str(cwd)
        where = run([sys.executable, "-c", "import refgen; print(refgen.__file__)"], env, cwd=cwd)
        assert Path(where.stdout.strip()).parent == cwd / "refgen"  # the copy is what runs
    cmd = [
        *how.get("prefix", []),
        sys.executable,
        "-m",
        "refgen",
        "generate",
        "--spec",
        str(workspace.spec),
        "--output-dir",
        str(out),
    ]
    run(cmd, env, cwd=cwd)
    for name in (REF, MANIFEST, SUMS):
        assert (out / name).read_bytes() == (workspace.root / name).read_bytes(), name


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_openmp_threads_sleep_unless_the_caller_chose(
    tmp_path: Path, given: str | None, expected: str
) -> None:
    """The profile makes idle OpenMP threads sleep (spinning ones stall the forwards on a busy
    machine), and keeps a caller's own policy: it changes no byte (the caller-omp-spinning
    condition above)."""
    code = (
        "import os; from refgen import determinism; determinism.apply_environment(); "
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in refgen_env(tmp_path).items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    assert run([sys.executable, "-c", code], env, cwd=ROOT).stdout.strip() == expected


@pytest.fixture(autouse=True)
def _nothing_left_in_temp(workspace: Workspace) -> Iterator[None]:
    """No process of any test may leave anything in the temp folder (rebuilds included)."""
    yield
    assert list((workspace.project / "tmp").iterdir()) == []


def test_deep_manifest_is_a_finding_not_a_crash(tiny_setup: TinySetup, tmp_path: Path) -> None:
    manifest = tmp_path / "x.manifest.json"
    manifest.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ArtifactError, match="nested more than"):
        audit.read_manifest(manifest)
    status = audit.is_up_to_date(load_spec(tiny_setup.spec), manifest)
    assert not status.current and "nested more than" in status.reasons[0]
