"""Hostile input (issue 9): every case ends in ``refgen: error: ...`` with its documented exit
code, names the thing at fault, writes nothing anywhere and leaves the previous artifact as it
was; no case ends in a traceback.

Each CLI case runs ``python -m refgen`` on a private copy of the tiny setup whose output folder
holds a previous artifact; the whole temporary tree (files, bytes, links) is compared before and
after. The property-based tests feed random structures to the readers in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import ROOT, TinySetup, run_refgen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refgen import audit, hub, jsonio, lock, paths, verify
from refgen.artifact import Artifact
from refgen.errors import RefgenError, SpecError
from refgen.spec import load_spec

NAME = "tiny_qwen3_reference"
SIBLINGS = (".json", ".manifest.json", ".intoto.json", ".sha256")
OLD = b"the previous artifact\n"
TIMEOUT = 120  # seconds: far above a tiny run (about 10 s), far below a hang (a FIFO read)


@dataclass(frozen=True)
class Case:
    """A tiny setup in ``base`` (specs/, out/, hf-home/) inside the test's ``tmp``."""

    setup: TinySetup
    tmp: Path

    @classmethod
    def with_old_artifact(cls, setup: TinySetup, tmp: Path) -> Case:
        """*setup* (a private copy inside *tmp*) with a previous artifact in its output folder:
        every case checks that it survives."""
        case = cls(setup, tmp)
        for suffix in SIBLINGS:
            (case.out / f"{NAME}{suffix}").write_bytes(OLD)
        return case

    @property
    def base(self) -> Path:
        return self.setup.spec.parent.parent

    @property
    def out(self) -> Path:
        return self.base / "out"

    def edit_spec(self, old: str, new: str) -> None:
        text = self.setup.spec.read_text()
        assert old in text
        self.setup.spec.write_text(text.replace(old, new))

    def set_output(self, output: str) -> None:
        self.edit_spec('output = "../out/tiny_qwen3_reference.json"', f'output = "{output}"')

    def edit_lock(self, change: Callable[[dict[str, Any]], Any]) -> None:
        data = json.loads(self.setup.lock.read_text())
        change(data)
        self.setup.lock.write_text(json.dumps(data, indent=2))

    def entry(self, data: dict[str, Any], path: str) -> dict[str, Any]:
        found: dict[str, Any] = next(f for f in data["files"] if f["path"] == path)
        return found


def snapshot(root: Path) -> dict[str, Any]:
    """Every entry under *root*: a link's target, a file's bytes, a folder's or a special
    file's presence (a FIFO is never opened: that would block this test)."""
    tree: dict[str, Any] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                tree[rel] = ("file", path.read_bytes())
            else:
                tree[rel] = ("special", stat.S_IFMT(info.st_mode))
    return tree


def assert_refused_cleanly(
    case: Case, args: list[str], code: int, names: tuple[str, ...], env: dict[str, str]
) -> None:
    """``refgen ARGS`` ends in ``refgen: error: ...`` with exit *code*, naming each of
    *names*, without a traceback, within :data:`TIMEOUT`, and nothing under the case's folder
    is written, moved or removed: the previous artifact is intact too."""
    before = snapshot(case.tmp)
    result = run_refgen(*args, hf_home=case.setup.hf_home, env=env, check=False, timeout=TIMEOUT)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    first = next(line for line in result.stderr.splitlines() if "error:" in line)
    assert first.startswith("refgen: error: "), result.stderr
    for name in names:
        assert name in result.stderr, (name, result.stderr)
    assert snapshot(case.tmp) == before


def _generate(case: Case, *extra: str) -> list[str]:
    return ["generate", "--spec", str(case.setup.spec), *extra]


def _lock_path(path: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.edit_lock(lambda d: d["files"][0].update(path=path))
        return _generate(case)

    return apply


def _lock_field(key: str, value: Callable[[Any], Any], victim: str = "config.json") -> Any:
    def apply(case: Case) -> list[str]:
        case.edit_lock(lambda d: case.entry(d, victim).update({key: value(case.entry(d, victim))}))
        return _generate(case)

    return apply


def _output(output: Callable[[Case], str]) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.set_output(output(case))
        return _generate(case)

    return apply


def _symlink_at(suffix: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        victim = case.tmp / "victim.txt"
        victim.write_bytes(b"not yours\n")
        link = case.out / f"{NAME}{suffix}"
        link.unlink()
        link.symlink_to(victim)
        return _generate(case, "--force")

    return apply


def _folder_at(suffix: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        path = case.out / f"{NAME}{suffix}"
        path.unlink()
        (path / "inside").mkdir(parents=True)
        return _generate(case, "--force")

    return apply


def _symlink_in_output_dir(case: Case) -> list[str]:
    victim = case.tmp / "victim.txt"
    victim.write_bytes(b"not yours\n")
    elsewhere = case.tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{NAME}.json").symlink_to(victim)
    return _generate(case, "--output-dir", str(elsewhere), "--force")


def _duplicate(case: Case) -> list[str]:
    case.edit_lock(lambda d: d["files"].append(dict(d["files"][0])))
    return _generate(case)


def _deep_lock(case: Case) -> list[str]:
    case.setup.lock.write_text('{"files": ' + "[" * 5000 + "]" * 5000 + "}")
    return _generate(case)


def _spec_is_a_folder(case: Case) -> list[str]:
    return ["generate", "--spec", str(case.setup.spec.parent)]


def _verify_spec_is_a_folder(case: Case) -> list[str]:
    return ["verify", "--spec", str(case.setup.spec.parent)]


def _cache_is_a_file(case: Case) -> list[str]:
    return _generate(case)


def _repo(repo: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.edit_spec('repo = "refgen-test/tiny-qwen3"', f'repo = "{repo}"')
        return _generate(case)

    return apply


def _spec_text(old: str, new: str, *extra: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.edit_spec(old, new)
        return _generate(case, *extra)

    return apply


def _append(text: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        case.setup.spec.write_text(case.setup.spec.read_text() + text)
        return _generate(case)

    return apply


def _colliding_specs(case: Case) -> list[str]:
    """Issue 19 class 5: spec b.toml's output is spec A's manifest name; both in --specs-dir."""
    specs = case.setup.spec.parent
    text = case.setup.spec.read_text().replace(f"{NAME}.json", f"{NAME}.manifest.json")
    (specs / "b.toml").write_text(text)
    shutil.copy(case.setup.lock, specs / "b.lock.json")
    return ["generate", "--specs-dir", str(specs)]


def _verify_with(*extra: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        return ["verify", "--spec", str(case.setup.spec), *extra]

    return apply


def _diff_with(*extra: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        a = case.out / f"{NAME}.json"
        return ["diff", str(a), str(a), *extra]

    return apply


def _compare_with(*extra: str) -> Callable[[Case], list[str]]:
    def apply(case: Case) -> list[str]:
        a = case.out / f"{NAME}.json"
        return ["compare", str(a), str(a), *extra]

    return apply


def _compare_report_in_missing_folder(option: str) -> Callable[[Case], list[str]]:
    """A report whose folder does not exist: refused as generate refuses a spec's output
    there, not created."""

    def apply(case: Case) -> list[str]:
        a = case.out / f"{NAME}.json"
        return ["compare", str(a), str(a), option, str(case.tmp / "missing" / "report")]

    return apply


LONG_NAME = "n" * 230  # + ".manifest.json" and a backup's 18 characters: past 255


# (id, prepare -> CLI arguments, exit code, what the message must name, extra environment)
CASES: list[tuple[str, Callable[[Case], list[str]], int, tuple[str, ...], dict[str, str]]] = [
    # 1. outputs that escape the spec's output root
    ("output ../../escape.json", _output(lambda c: "../../escape.json"), 2,
     ("'reference.output'", "../../escape.json", "--output-dir"), {}),
    ("output absolute", _output(lambda c: str(c.tmp / "abs.json")), 2,
     ("'reference.output'", "relative"), {}),
    ("output in a missing folder", _output(lambda c: "../nope/deeper/x.json"), 2,
     ("'reference.output'", "does not exist"), {}),
    # 2. an output over an input
    ("output = the spec's lock", _output(lambda c: "tiny-qwen3.lock.json"), 2,
     ("'reference.output'", "tiny-qwen3.lock.json", "input"), {}),
    ("output = a model file in the cache",
     _output(lambda c: os.path.relpath(c.setup.checkpoint.snapshot / "config.json",
                                       c.setup.spec.parent)),
     2, ("config.json", "model cache"), {}),
    # 3. links and folders at an output path
    ("symlink at X.json", _symlink_at(".json"), 2, (f"{NAME}.json", "symbolic link"), {}),
    ("symlink at X.manifest.json", _symlink_at(".manifest.json"), 2,
     (f"{NAME}.manifest.json", "symbolic link"), {}),
    ("symlink at X.intoto.json", _symlink_at(".intoto.json"), 2,
     (f"{NAME}.intoto.json", "symbolic link"), {}),
    ("symlink at X.sha256", _symlink_at(".sha256"), 2, (f"{NAME}.sha256", "symbolic link"), {}),
    ("symlink at X.json in --output-dir", _symlink_in_output_dir, 2,
     (f"{NAME}.json", "symbolic link", "--output-dir"), {}),
    ("X.json is a folder", _folder_at(".json"), 2, (f"{NAME}.json", "not a regular file"), {}),
    ("X.sha256 is a folder", _folder_at(".sha256"), 2,
     (f"{NAME}.sha256", "not a regular file"), {}),
    # 4, 10, duplicates: lock entries
    ("lock path ../../refs/main", _lock_path("../../refs/main"), 2,
     ("tiny-qwen3.lock.json", "files[0]", "'..'"), {}),
    ("lock path absolute", _lock_path("/etc/passwd"), 2, ("files[0]", "absolute"), {}),
    ("lock path with an empty component", _lock_path("a//config.json"), 2,
     ("files[0]", "empty component"), {}),
    ("lock path with a backslash", _lock_path("..\\config.json"), 2, ("files[0]", "backslash"), {}),
    ("lock lists a file twice", _duplicate, 2, ("a second time",), {}),
    ("lock sha256 in uppercase", _lock_field("sha256", lambda e: e["sha256"].upper()), 2,
     ("config.json", "lowercase"), {}),
    ("lock sha256 too short", _lock_field("sha256", lambda e: e["sha256"][:63]), 2,
     ("config.json", "64 lowercase"), {}),
    ("lock size negative", _lock_field("size", lambda e: -1), 2, ("config.json", "'size'"), {}),
    ("lock size a string", _lock_field("size", lambda e: str(e["size"])), 2,
     ("config.json", "'size'"), {}),
    ("lock size a float", _lock_field("size", lambda e: e["size"] + 0.5), 2,
     ("config.json", "'size'"), {}),
    ("lock blake3 in uppercase", _lock_field("blake3", lambda e: e["blake3"].upper()), 2,
     ("config.json", "'blake3'"), {}),
    ("lock blake3 a number", _lock_field("blake3", lambda e: 7), 2,
     ("config.json", "'blake3'"), {}),
    # the SHA-256 still names the file, the BLAKE3 other bytes: generate verifies the BLAKE3
    ("lock blake3 of other bytes",
     _lock_field("blake3", lambda e: "0" * 64, "model.safetensors"), 3,
     ("model.safetensors", "expected blake3 " + "0" * 64), {}),
    ("lock nested 5000 deep", _deep_lock, 2, ("tiny-qwen3.lock.json", "nested"), {}),
    # 6. the lock's size is checked before hashing
    ("lock size differs from the file",
     _lock_field("size", lambda e: e["size"] + 1, "model.safetensors"), 3,
     ("model.safetensors", "bytes in the lock"), {}),
    # minor list
    ("repo ../x", _repo("../x"), 2, ("'model.repo'", "../x"), {}),
    ("repo a..b/x", _repo("a..b/x"), 2, ("'model.repo'", "a..b/x"), {}),
    ("spec path is a folder", _spec_is_a_folder, 2, ("is a folder", "--specs-dir"), {}),
    ("verify: spec path is a folder", _verify_spec_is_a_folder, 2, ("is a folder",), {}),
    ("HF_HUB_CACHE is a file", _cache_is_a_file, 2, ("not a folder", "HF_HUB_CACHE"),
     {"HF_HUB_CACHE": "@file"}),
    # issue 19 class 3 / item 5: output names in a portable character set, length checked first
    ("output name with a line break", _output(lambda c: "../out/a\\nb.json"), 2,
     ("'reference.output'", "line break '\\n' (U+000A)", "portable"), {}),
    ("output name with U+2028", _output(lambda c: "../out/a\\u2028b.json"), 2,
     ("'reference.output'", "line break", "U+2028"), {}),
    ("output name with U+0085", _output(lambda c: "../out/a\\u0085b.json"), 2,
     ("'reference.output'", "line break", "U+0085"), {}),
    ("output name with a control character", _output(lambda c: "../out/a\\u0001b.json"), 2,
     ("'reference.output'", "U+0001"), {}),
    ("output name too long for the file system", _output(lambda c: f"../out/{LONG_NAME}.json"),
     2, ("too long", "255", "Shorten the name"), {}),
    # issue 19 class 5 / item 4: two specs of one run writing the same file
    ("--specs-dir: spec B writes spec A's manifest", _colliding_specs, 2,
     ("b.toml", "tiny-qwen3.toml", f"{NAME}.manifest.json", "both write"), {}),
    # issue 19 class 9 / item 11 and the minor list: numbers and names out of range
    ("schema = true", _spec_text("schema = 1", "schema = true"), 2,
     ("'schema' must be the integer 1", "True"), {}),
    ("schema = 1.0", _spec_text("schema = 1", "schema = 1.0"), 2,
     ("'schema' must be the integer 1", "1.0"), {}),
    ("tolerance = inf", _append("[verify]\ntolerance = inf\n"), 2,
     ("'verify.tolerance' must be a finite number >= 0", "inf"), {}),
    ("tolerance negative", _append("[verify]\ntolerance = -1.0\n"), 2,
     ("'verify.tolerance' must be a finite number >= 0",), {}),
    ("memory_budget of 400 digits", _spec_text("top_k = 10", "top_k = 10\nmemory_budget = 1"
                                                + "0" * 400), 2,
     ("'run.memory_budget'", "more than any machine has"), {}),
    ("memory_budget = 1.5", _spec_text("top_k = 10", "top_k = 10\nmemory_budget = 1.5"), 2,
     ("'run.memory_budget' must be a size", "got a float (1.5)"), {}),
    ("top-level key that belongs in [run]", _spec_text("schema = 1", "schema = 1\ntop_k = 3"), 2,
     ("unknown top-level key 'top_k'", "belongs in [run]"), {}),
    ("probe list of 100,000 layers",
     _append("[probes]\nhidden_states = [" + ", ".join(map(str, range(100_000))) + "]\n"), 2,
     ("'probes.hidden_states' lists 100000 layers",), {}),
    ("SOURCE_DATE_EPOCH out of range", _generate, 2, ("SOURCE_DATE_EPOCH", "at most"),
     {"SOURCE_DATE_EPOCH": "9" * 30}),
    ("SOURCE_DATE_EPOCH in non-ASCII digits", _generate, 2, ("SOURCE_DATE_EPOCH", "ASCII"),
     {"SOURCE_DATE_EPOCH": "\u0661\u0662\u0663"}),
    ("REFGEN_IMAGE_LAYERS malformed", _generate, 2, ("REFGEN_IMAGE_LAYERS", "JSON list"),
     {"REFGEN_CONTAINER_IMAGE": "sha256:" + "a" * 64, "REFGEN_IMAGE_LAYERS": "[not json"}),
    ("verify: REFGEN_IMAGE_LAYERS malformed", _verify_with(), 2,
     ("REFGEN_IMAGE_LAYERS", "JSON list"),
     {"REFGEN_CONTAINER_IMAGE": "sha256:" + "a" * 64, "REFGEN_IMAGE_LAYERS": '{"a": 1}'}),
    ("verify --atol nan", _verify_with("--atol", "nan"), 2,
     ("--atol", "finite number >= 0"), {}),
    ("diff --rtol -1", _diff_with("--rtol=-1"), 2, ("--rtol", "finite number >= 0"), {}),
    ("diff --atol inf", _diff_with("--atol", "inf"), 2, ("--atol", "finite number >= 0"), {}),
    ("compare --factor nan", _compare_with("--factor", "nan"), 2,
     ("--factor must be a positive number",), {}),
    ("compare --json in a missing folder", _compare_report_in_missing_folder("--json"), 2,
     ("the folder of --json does not exist", "missing", "Create it first"), {}),
    ("compare --html in a missing folder", _compare_report_in_missing_folder("--html"), 2,
     ("the folder of --html does not exist", "missing", "Create it first"), {}),
]  # fmt: skip


@pytest.fixture
def case(tiny_copy: TinySetup, tmp_path: Path) -> Case:
    return Case.with_old_artifact(tiny_copy, tmp_path)


@pytest.mark.parametrize(
    ("prepare", "code", "names", "env"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_hostile_input_is_refused_cleanly(
    case: Case,
    prepare: Callable[[Case], list[str]],
    code: int,
    names: tuple[str, ...],
    env: dict[str, str],
) -> None:
    args = prepare(case)
    extra = dict(env)
    if extra.get("HF_HUB_CACHE") == "@file":
        extra["HF_HUB_CACHE"] = str(case.tmp / "cache-file")
        Path(extra["HF_HUB_CACHE"]).write_text("a file, not a folder\n")
    assert_refused_cleanly(case, args, code, names, extra)


def test_spec_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable spec (root reads any file, so the refusal is simulated in-process)."""
    spec = tmp_path / "x.toml"
    spec.write_text("schema = 1\n")

    def refuse(path: Path) -> BinaryIO:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(jsonio, "open_regular", refuse)
    with pytest.raises(RefgenError, match=r"cannot read the spec .*Permission denied"):
        load_spec(spec)


def test_output_dir_is_explicit_and_may_be_anywhere(case: Case) -> None:
    """A spec cannot send its output out of the project; the caller can, with --output-dir."""
    elsewhere = case.tmp / "elsewhere" / "new"
    result = run_refgen(
        "generate", "--spec", case.setup.spec, "--output-dir", elsewhere,
        hf_home=case.setup.hf_home, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(f"{NAME}{s}" for s in SIBLINGS)
    manifest = json.loads((elsewhere / f"{NAME}.manifest.json").read_text())
    # the manifest says where the spec sends the output, relative to the spec's folder
    assert manifest["spec"]["content"]["reference"]["output"] == f"../out/{NAME}.json"
    assert manifest["outputs"][0]["path"] == f"{NAME}.json"
    for suffix in SIBLINGS:  # the previous artifact at the spec's destination is untouched
        assert (case.out / f"{NAME}{suffix}").read_bytes() == OLD


def test_manifest_records_actual_sizes_and_the_relative_output(case: Case) -> None:
    """Sizes come from the files (a lock without sizes is valid), the output path relative to
    the spec's folder."""
    sizes = {f["path"]: f["size"] for f in json.loads(case.setup.lock.read_text())["files"]}
    case.edit_lock(lambda d: [f.update(size=None) for f in d["files"]])
    run_refgen("generate", "--spec", case.setup.spec, "--force", hf_home=case.setup.hf_home)
    manifest = json.loads((case.out / f"{NAME}.manifest.json").read_text())
    assert {f["path"]: f["size"] for f in manifest["model"]["files"]} == sizes
    assert manifest["spec"]["content"]["reference"]["output"] == f"../out/{NAME}.json"


# --- manifests read back: verify and the up-to-date check --------------------------------------


def _escape(m: dict[str, Any], victim: Path) -> None:
    """A consistent manifest naming a host file outside the artifact's folder."""
    from refgen.hashing import sha256_file

    digest, size = sha256_file(victim, progress=False)
    m["outputs"].append({"path": os.path.relpath(victim, m.pop("_folder")), "sha256": digest,
                         "size": size})  # fmt: skip


MANIFEST_CASES: dict[str, Callable[[dict[str, Any], Path], Any]] = {
    "outputs path outside the folder": _escape,
    "outputs is an object": lambda m, v: m.update(outputs={"path": "x"}),
    "model is a string": lambda m, v: m.update(model="Qwen"),
    "spec.content is a list": lambda m, v: m["spec"].update(content=[1]),
    "model.files entry with ..": lambda m, v: m["model"]["files"].append(
        {"path": "../../x", "sha256": "0" * 64, "size": 1}
    ),
    "container is a list": lambda m, v: m.update(container=["x"]),
    "generator is a number": lambda m, v: m.update(generator=3),
    "requirements_lock is a string": lambda m, v: m.update(requirements_lock="x"),
    "deep JSON": lambda m, v: m.update(platform=json.loads("[" * 500 + "]" * 500)),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, tiny_setup: TinySetup) -> Path:
    """One real artifact (from the tiny setup), generated once for this module."""
    base = tmp_path_factory.mktemp("artifact")
    shutil.copytree(tiny_setup.spec.parent, base / "specs")
    (base / "out").mkdir()
    run_refgen("generate", "--spec", base / "specs" / tiny_setup.spec.name,
               hf_home=tiny_setup.hf_home)  # fmt: skip
    return base


def _tampered(artifact: Path, dest: Path, case: str) -> tuple[Path, Path]:
    shutil.copytree(artifact, dest / "ws")
    victim = dest / "victim.txt"
    victim.write_text("a host file\n")
    manifest_path = dest / "ws" / "out" / f"{NAME}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["_folder"] = str(manifest_path.parent)
    MANIFEST_CASES[case](manifest, victim)
    manifest.pop("_folder", None)
    text = json.dumps(manifest, indent=2)
    if case == "deep JSON":  # nest deeper than Python's recursion limit
        text = text.replace('"platform": []', '"platform": ' + "[" * 5000 + "]" * 5000)
    manifest_path.write_text(text)
    return dest / "ws" / "specs" / "tiny-qwen3.toml", manifest_path


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_malformed_manifest_is_out_of_date(
    artifact: Path, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate's up-to-date check: a malformed manifest means rebuild, never a crash, and no
    file outside the artifact's folder is read."""
    spec_path, manifest_path = _tampered(artifact, tmp_path, case)
    read: list[str] = []
    real = audit.sha256_file  # type: ignore[attr-defined]

    def spy(path: Path, progress: bool = True) -> tuple[str, int]:
        read.append(str(path))
        return real(path, progress)

    monkeypatch.setattr(audit, "sha256_file", spy)
    status = audit.is_up_to_date(load_spec(spec_path), manifest_path)
    assert not status
    assert any("malformed" in r or "nested" in r for r in status.reasons), status.reasons
    assert not any("victim" in p for p in read)


def test_verify_never_reads_outside_the_artifact(
    artifact: Path, tmp_path: Path, tiny_setup: TinySetup
) -> None:
    """A manifest naming a host file (with its real hash) is a finding, not a verdict about it;
    a wrong-typed section and deep JSON are findings too (three verify runs, one rebuild each)."""
    for case in ("outputs path outside the folder", "model is a string", "deep JSON"):
        spec_path, _ = _tampered(artifact, tmp_path / case.replace(" ", "-"), case)
        result = run_refgen("verify", "--spec", spec_path, "--json",
                            hf_home=tiny_setup.hf_home, check=False)  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 11, (case, result.stdout, result.stderr)
        report = json.loads(result.stdout)
        details = " ".join(f["detail"] for f in report["integrity"])
        assert "malformed" in details or "nested" in details, (case, report["integrity"])
        assert "victim" not in json.dumps(report["comparison"] or {})


def test_verify_with_a_relative_hf_home_from_another_folder(
    artifact: Path, tmp_path: Path, tiny_setup: TinySetup
) -> None:
    """Issue 9 #9: the rebuild reads the same cache the caller named, relative or not."""
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    relative = os.path.relpath(tiny_setup.hf_home, elsewhere)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REFGEN_"))}
    env.update(HF_HOME=relative, PYTHONPATH=str(ROOT))
    spec = artifact / "specs" / tiny_setup.spec.name
    proc = subprocess.run(
        [sys.executable, "-m", "refgen", "verify", "--spec", str(spec)],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("REPRODUCED BIT FOR BIT"), proc.stdout


def test_child_environment_absolutises_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = verify.child_environment(
        {"HF_HOME": "hf", "HF_HUB_CACHE": "../c", "PYTHONPATH": "src:/abs", "OTHER": "rel"}
    )
    assert env["HF_HOME"] == str(tmp_path / "hf")
    assert env["HF_HUB_CACHE"] == str(tmp_path.parent / "c")
    assert env["PYTHONPATH"] == f"{tmp_path / 'src'}:/abs"
    assert env["OTHER"] == "rel"


# --- property-based: random structures through the readers, in-process ---------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _replace_somewhere(doc: Any, data: st.DataObject) -> Any:
    """*doc* with one value, anywhere in it (the root included), replaced by a random one."""
    if not isinstance(doc, dict | list) or not doc or data.draw(st.integers(0, 3)) == 0:
        return data.draw(JSON)
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = data.draw(st.sampled_from(keys))
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[key] = _replace_somewhere(doc[key], data)
    return copy


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(
            value) else repr(value)  # fmt: skip
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(
            f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        ) + "}"  # fmt: skip
    return '""'


def _toml(doc: Any) -> str:
    if not isinstance(doc, dict):
        return f"value = {_toml_value(doc)}\n"
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        lines.append(f"[{json.dumps(name)}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


VALID_SPEC: dict[str, Any] = {
    "schema": 1,
    "reference": {"name": "x", "output": "out/x.json"},
    "model": {"repo": "org/name", "revision": "0" * 40, "dtype": "float32"},
    "run": {"prompts": ["hello", "world"], "top_k": 3},
    "verify": {"tolerance": 1e-6},
}


@PROPERTY
@given(data=st.data())
def test_property_spec(tmp_path: Path, data: st.DataObject) -> None:
    """Any spec text (a valid spec with one value replaced, random TOML-ish text, or random
    bytes) gives a Spec or a SpecError, nothing else, and leaves every file as it was; a spec it
    accepts keeps its promises (output inside its folder, named in the portable set, strict
    numbers)."""
    path = tmp_path / "spec.toml"
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        path.write_bytes(data.draw(st.binary(max_size=200)))
    elif choice == 1:
        path.write_text(data.draw(st.text(max_size=200)), encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(_toml(_replace_somewhere(VALID_SPEC, data)), encoding="utf-8",
                        errors="surrogatepass")  # fmt: skip
    (tmp_path / "out").mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    try:
        spec = load_spec(path)
    except SpecError:
        assert snapshot(tmp_path) == before
        return
    assert snapshot(tmp_path) == before
    assert tmp_path.resolve() in spec.output.parents
    assert paths.output_name_problem(spec.output.name) is None
    assert math.isfinite(spec.tolerance) and spec.tolerance >= 0
    assert type(spec.top_k) is int and spec.top_k >= 1
    assert spec.memory_budget is None or 0 < spec.memory_budget <= 2**63 - 1


@pytest.fixture(scope="module")
def lock_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("property-lock")
    spec = folder / "spec.toml"
    spec.write_text(_toml(VALID_SPEC))
    return spec


VALID_LOCK: dict[str, Any] = {
    "schema": lock.LOCK_SCHEMA,
    "repo": "org/name",
    "revision": "0" * 40,
    "files": [
        {"path": "config.json", "sha256": "a" * 64, "size": 10},
        {"path": "sub/model.safetensors", "sha256": "b" * 64, "size": None},
    ],
}


@PROPERTY
@given(data=st.data())
def test_property_lock(lock_spec: Path, data: st.DataObject) -> None:
    """read_lock on a valid lock with one value replaced: a lock whose every path stays in the
    snapshot, or a RefgenError."""
    spec = load_spec(lock_spec)
    spec.lock_path.write_text(json.dumps(_replace_somewhere(VALID_LOCK, data)))
    try:
        result = lock.read_lock(spec)
    except RefgenError:
        return
    for f in result.files:
        assert lock.entry_problem(vars(f)) is None
        snapshot = Path("/snapshot")
        assert Path(os.path.normpath(snapshot / f.path)).is_relative_to(snapshot)


@PROPERTY
@given(data=st.data())
def test_property_manifest(
    artifact: Path, tiny_setup: TinySetup, tmp_path: Path, data: st.DataObject
) -> None:
    """A real manifest with one value replaced, through read_manifest, check_integrity,
    check_inputs and is_up_to_date: results or RefgenError, never another exception."""
    spec = load_spec(artifact / "specs" / tiny_setup.spec.name)
    original = json.loads((artifact / "out" / f"{NAME}.manifest.json").read_text())
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    for suffix in (".json", ".sha256"):
        shutil.copy(artifact / "out" / f"{NAME}{suffix}", folder)
    path = folder / f"{NAME}.manifest.json"
    path.write_text(json.dumps(_replace_somewhere(original, data)))
    try:
        manifest = audit.read_manifest(path)
    except RefgenError:
        pass
    else:
        assert audit.manifest_problems(manifest) == []
        artifact_ = Artifact(folder / f"{NAME}.json")
        for finding in audit.check_integrity(artifact_, manifest):
            assert isinstance(finding, audit.Finding)
        with contextlib.suppress(RefgenError):
            audit.check_inputs(spec, manifest, model_files=False)
    status = audit.is_up_to_date(spec, path)
    assert isinstance(status.current, bool)


def test_json_reader_bounds_nesting() -> None:
    assert jsonio.loads("[[[]]]") == [[[]]]
    for text in ("[" * 100 + "]" * 100, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(ValueError, match="nested"):
            jsonio.loads(text)


def test_verified_view_creates_nothing_outside_itself(tmp_path: Path) -> None:
    """Issue 9 #4: even a lock built in code (not read from disk) cannot place a link outside
    the view; the refusal names the entry."""
    (tmp_path / "snapshot").mkdir()
    (tmp_path / "snapshot" / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    for bad in ("../../refs/main", "/abs/path", "a//b"):
        bad_lock = lock.ModelLock("org/name", "0" * 40, (lock.LockedFile(bad, "0" * 64, None),))
        with (
            pytest.raises(RefgenError, match="lock entry"),
            hub.verified_view(tmp_path / "snapshot", bad_lock),
        ):
            pass
    assert snapshot(tmp_path) == before


def test_sums_file_naming_a_host_file_is_a_finding(artifact: Path, tmp_path: Path) -> None:
    """X.sha256 listing '../../victim.txt' with its real hash: named, never opened."""
    shutil.copytree(artifact, tmp_path / "ws")
    victim = tmp_path / "victim.txt"
    victim.write_text("a host file\n")
    sums = tmp_path / "ws" / "out" / f"{NAME}.sha256"
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    relative = os.path.relpath(victim, sums.parent)
    sums.write_text(sums.read_text() + f"{digest}  {relative}\n")
    manifest = audit.read_manifest(tmp_path / "ws" / "out" / f"{NAME}.manifest.json")
    found = audit.check_integrity(Artifact(sums.with_name(f"{NAME}.json")), manifest)
    assert [f.subject for f in found] == [relative]
    assert "only files next to the reference are read" in found[0].detail
