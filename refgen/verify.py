"""The auditor's rebuild: check a published reference against its manifest, rebuild it, compare.

Steps, each reported:

1. **Integrity** - the committed files against what they claim: every output listed in the
   manifest (SHA-256, size), the ``X.sha256`` file (which also covers the manifest itself), and the
   provenance statement's subject and dependencies when ``X.intoto.json`` is present.
2. **Inputs** - what is available now against what the manifest names: the spec, its model lock,
   every model file in the local Hugging Face cache, ``requirements.lock`` and the container image.
3. **Rebuild** - ``refgen generate`` in a fresh process (the determinism profile must be applied
   before torch is imported) into a temporary folder, removed afterwards even when interrupted.
4. **Compare** - :mod:`refgen.compare` between the committed JSON and the rebuilt one.

The verdict is the comparison's, except that a failed integrity check, a differing input or a
failed rebuild make it NOT REPRODUCED: a rebuild from other inputs cannot confirm the claim that
the artifact was made from the manifest's. Exit codes are :class:`refgen.compare.Verdict`'s
(0 bit for bit, 10 within tolerance, 11 not reproduced); 2 when verification could not run
(no spec, model not in the cache).

:func:`is_up_to_date` is the same input check, cheap (no hashing of model files: the generator
verifies them against the lock anyway), for ``generate`` to skip work when nothing changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refgen import compare, provenance
from refgen.compare import Comparison, Tolerance, Verdict
from refgen.errors import RefgenError
from refgen.hashing import sha256_file
from refgen.spec import Spec, add_spec_arguments, load_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REBUILD_PREFIX = "refgen-verify-"
# Manifest sections that describe the host and software, not inputs: differences are notes.
ENVIRONMENT_SECTIONS = ("packages", "torch_build", "platform", "determinism", "generator")


class VerifyError(RefgenError):
    """Verification could not run (the artifact to verify does not exist)."""


@dataclass(frozen=True)
class Finding:
    """A failed check: ``kind`` is integrity | input | rebuild; ``subject`` names the file."""

    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


@dataclass(frozen=True)
class Artifact:
    """The files of one published reference (``X.json`` and its siblings)."""

    reference: Path

    @property
    def stem(self) -> str:
        return self.reference.name.removesuffix(".json")

    @property
    def manifest(self) -> Path:
        return self.reference.with_name(self.stem + ".manifest.json")

    @property
    def sums(self) -> Path:
        return self.reference.with_name(self.stem + ".sha256")

    @property
    def statement(self) -> Path:
        return provenance.statement_path(self.reference)


@dataclass(frozen=True)
class VerifyResult:
    """Everything verify found; ``verdict`` already accounts for integrity and input findings."""

    verdict: Verdict
    reference: str
    integrity: tuple[Finding, ...]
    inputs: tuple[Finding, ...]
    rebuild_error: str | None
    comparison: Comparison | None
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    @property
    def findings(self) -> tuple[Finding, ...]:
        rebuild = (Finding("rebuild", "rebuild", self.rebuild_error),) if self.rebuild_error else ()
        return self.integrity + self.inputs + rebuild

    def summary(self) -> str:
        """The one-line verdict printed first."""
        head = f"{self.verdict.value.upper()}: {self.reference}"
        if self.verdict is Verdict.IDENTICAL and self.comparison is not None:
            return f"{head} - the rebuild has the same SHA-256 {self.comparison.a_sha256}"
        if self.verdict is Verdict.WITHIN_TOLERANCE and self.comparison is not None:
            return head + " - " + self.comparison.summary().split(": ", 1)[1]
        parts = []
        if self.integrity:
            parts.append("committed files fail their manifest (" + _names(self.integrity) + ")")
        if self.inputs:
            parts.append("inputs differ from the manifest (" + _names(self.inputs) + ")")
        if self.rebuild_error:
            parts.append("rebuild failed")
        if self.comparison is not None:
            if self.comparison.verdict is Verdict.NOT_REPRODUCED:
                first = self.comparison.differences[0] if self.comparison.differences else None
                parts.append(
                    f"{self.comparison.difference_count} difference(s) in the rebuild"
                    + (f", first at {first.path}: {first.detail}" if first else "")
                )
            else:
                parts.append(f"the rebuild itself was {self.comparison.verdict.value}")
        return head + " - " + "; ".join(parts)

    def render(self) -> str:
        lines = [self.summary(), ""]
        for title, items in (
            ("Integrity of the committed files", self.integrity),
            ("Inputs now vs. the manifest", self.inputs),
        ):
            lines.append(f"{title}: " + ("ok" if not items else f"{len(items)} problem(s)"))
            lines += [f"  {f}" for f in items]
        if self.rebuild_error:
            lines += ["Rebuild failed:"] + [f"  {x}" for x in self.rebuild_error.splitlines()]
        if self.comparison is not None:
            lines += ["", "Comparison of the committed reference (A) with the rebuild (B):"]
            lines += ["  " + x if x else "" for x in self.comparison.render().splitlines()]
        if self.notes:
            lines += ["", "Notes (not failures):"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.name,
            "verdict_text": self.verdict.value,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "reference": self.reference,
            "integrity": [vars(f) for f in self.integrity],
            "inputs": [vars(f) for f in self.inputs],
            "rebuild_error": self.rebuild_error,
            "comparison": self.comparison.to_json() if self.comparison else None,
            "notes": list(self.notes),
        }


def _names(findings: Sequence[Finding]) -> str:
    return ", ".join(dict.fromkeys(f.subject for f in findings))


# --- 1. integrity -------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict; a missing or malformed one is a :class:`VerifyError`."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise VerifyError(f"no manifest {path.name} next to the reference") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerifyError(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("refgen.manifest/"):
        raise VerifyError(f"{path.name} is not a refgen manifest (no 'schema: refgen.manifest/N')")
    return data


def check_integrity(artifact: Artifact, manifest: Mapping[str, Any] | None) -> list[Finding]:
    """Committed files against the manifest, the sums file and the provenance statement."""
    found: list[Finding] = []
    folder = artifact.reference.parent
    if manifest is not None:
        outputs = manifest.get("outputs") or []
        if artifact.reference.name not in {o.get("path") for o in outputs}:
            found.append(
                Finding("integrity", artifact.manifest.name, "does not list the reference")
            )
        for out in outputs:
            found += _check_file(folder / str(out.get("path")), out.get("sha256"), out.get("size"))
    if artifact.sums.is_file():
        for line_no, line in enumerate(artifact.sums.read_text().splitlines(), 1):
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                found.append(Finding("integrity", artifact.sums.name, f"line {line_no} malformed"))
                continue
            found += _check_file(folder / name, digest, None, via=artifact.sums.name)
    else:
        found.append(Finding("integrity", artifact.sums.name, "missing"))
    if manifest is not None and artifact.statement.is_file():
        found += _check_statement(artifact, manifest)
    return _dedupe(found)


def _check_file(path: Path, sha256: Any, size: Any, via: str = "manifest") -> list[Finding]:
    if not path.is_file():
        return [Finding("integrity", path.name, f"missing (listed in the {via})")]
    actual, actual_size = sha256_file(path, progress=False)
    if actual != sha256:
        return [
            Finding(
                "integrity",
                path.name,
                f"sha256 {actual} does not match the {via}'s {sha256}; the file was modified "
                "after it was generated",
            )
        ]
    if size is not None and actual_size != size:
        return [Finding("integrity", path.name, f"size {actual_size} != {size} in the {via}")]
    return []


def _check_statement(artifact: Artifact, manifest: Mapping[str, Any]) -> list[Finding]:
    """The statement must attest the same subject and dependencies the manifest records."""
    name = artifact.statement.name
    try:
        statement = json.loads(artifact.statement.read_bytes())
        expected = provenance.build_statement(manifest, environ={})
        subject_ok = statement["subject"] == expected["subject"]
        deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        deps_ok = deps == expected["predicate"]["buildDefinition"]["resolvedDependencies"]
    except (ValueError, KeyError, TypeError, RefgenError) as exc:
        return [Finding("integrity", name, f"unreadable or incomplete ({exc!r})")]
    found = []
    if not subject_ok:
        found.append(Finding("integrity", name, "subject does not match the manifest's outputs"))
    if not deps_ok:
        found.append(Finding("integrity", name, "resolvedDependencies differ from the manifest"))
    return found


def _dedupe(found: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(found))


# --- 2. inputs ----------------------------------------------------------------------------------


def check_inputs(spec: Spec, manifest: Mapping[str, Any], *, model_files: bool) -> list[Finding]:
    """Current inputs against the manifest. ``model_files`` hashes the cached model files too."""
    from refgen import manifest as manifest_mod

    found: list[Finding] = []
    recorded_spec = manifest.get("spec") or {}
    if spec.sha256 != recorded_spec.get("sha256"):
        changed = _dict_diff(recorded_spec.get("content"), spec.as_dict(), "")
        detail = (
            "changed: " + ", ".join(changed) if changed else "bytes changed (content is the same)"
        )
        found.append(Finding("input", f"spec {spec.path.name}", detail))
    model = manifest.get("model") or {}
    # A local folder's spec may leave the revision to its lock (whose hash is checked below).
    wanted = spec.revision or model.get("revision")
    if (model.get("repo"), model.get("revision")) != (spec.repo, wanted):
        found.append(
            Finding(
                "input",
                "model",
                f"manifest has {model.get('repo')}@{model.get('revision')}, "
                f"the spec asks for {spec.repo}@{spec.revision}",
            )
        )
    lock = spec.lock_path
    if not lock.is_file():
        found.append(Finding("input", f"model lock {lock.name}", "missing"))
    elif sha256_file(lock, progress=False)[0] != model.get("lock_sha256"):
        found.append(
            Finding("input", f"model lock {lock.name}", _lock_detail(lock, model.get("files")))
        )
    if model_files:
        found += _check_model_files(spec, model)
    req_recorded = manifest.get("requirements_lock") or {}
    req_now = manifest_mod.requirements_lock() or {}
    if req_recorded.get("sha256") != req_now.get("sha256"):
        found.append(
            Finding(
                "input",
                str(req_recorded.get("file") or "requirements.lock"),
                f"sha256 {req_now.get('sha256')} now, {req_recorded.get('sha256')} in the manifest",
            )
        )
    found += _check_container(manifest.get("container"), manifest_mod.container())
    return found


def _lock_detail(lock: Path, recorded: Any) -> str:
    try:
        files = {f["path"]: f["sha256"] for f in json.loads(lock.read_text())["files"]}
    except (ValueError, KeyError, TypeError):
        return "changed and no longer readable"
    before = {f.get("path"): f.get("sha256") for f in recorded or []}
    changed = sorted(p for p in set(files) | set(before) if files.get(p) != before.get(p))
    return "changed" + (f" (entries: {', '.join(map(str, changed))})" if changed else "")


def _check_model_files(spec: Spec, model: Mapping[str, Any]) -> list[Finding]:
    """Hash the cached files of the pinned revision; a missing model is an error, not a finding."""
    from refgen import hub

    lock = hub.ModelLock(
        spec.repo,
        spec.revision or str(model.get("revision")),
        tuple(
            hub.LockedFile(str(f["path"]), str(f["sha256"]), f.get("size"))
            for f in model.get("files") or []
        ),
    )
    folder = hub.cached_snapshot(spec, lock)
    found = []
    for f in lock.files:
        actual, size = sha256_file(folder / f.path, progress=False)
        if actual != f.sha256 or f.size not in (None, size):
            found.append(
                Finding(
                    "input",
                    f"model file {f.path}",
                    f"cached copy has sha256 {actual} ({size} bytes), the manifest names "
                    f"{f.sha256} ({f.size} bytes)",
                )
            )
    return found


def _check_container(recorded: Any, now: Any) -> list[Finding]:
    if (
        isinstance(recorded, Mapping)
        and isinstance(now, Mapping)
        and recorded.get("image_id") != now.get("image_id")
    ):
        return [
            Finding(
                "input",
                "container image",
                f"running in {now.get('image_id')}, the manifest names {recorded.get('image_id')}",
            )
        ]
    return []


def _dict_diff(a: Any, b: Any, path: str) -> list[str]:
    """Paths where two JSON-like values differ (for naming what changed in a spec)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _dict_diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _dict_diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path or "(root)"]


# --- incremental runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpToDate:
    """Whether an artifact is current; ``reasons`` says why not (empty when current)."""

    current: bool
    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.current


def is_up_to_date(spec: Spec, manifest_path: Path) -> UpToDate:
    """True when the spec, its model lock, ``requirements.lock`` and the generator's sources are
    those the manifest records and the outputs it lists are intact; cheap (no model hashing)."""
    from refgen import manifest as manifest_mod

    try:
        recorded = read_manifest(manifest_path)
    except VerifyError as exc:
        return UpToDate(False, (str(exc),))
    artifact = Artifact(manifest_path.with_name(_reference_name(manifest_path)))
    reasons = [str(f) for f in check_inputs(spec, recorded, model_files=False)]
    reasons += [str(f) for f in check_integrity(artifact, recorded)]
    sources = (recorded.get("generator") or {}).get("sources_sha256")
    if sources != manifest_mod.generator_identity()["sources_sha256"]:
        reasons.append("generator sources changed since the manifest was written")
    return UpToDate(not reasons, tuple(reasons))


def _reference_name(manifest_path: Path) -> str:
    return manifest_path.name.removesuffix(".manifest.json") + ".json"


# --- 3. rebuild ---------------------------------------------------------------------------------


@contextmanager
def rebuild(spec: Spec) -> Iterator[tuple[Path | None, str | None]]:
    """Run the generator into a temporary folder; yields (reference path or None, error text).

    The folder and the child process are cleaned up on every exit, Ctrl-C and SIGTERM included.
    """
    with tempfile.TemporaryDirectory(prefix=REBUILD_PREFIX) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "refgen",
            "generate",
            "--spec",
            str(spec.path),
            "--output-dir",
            tmp,
            "--force",
        ]
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            log, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        built = Path(tmp) / spec.output.name
        if proc.returncode != 0 or not built.is_file():
            lines = [line for line in log.splitlines() if "it/s]" not in line]
            # from the generator's error message on (it names the file and the fix), else all
            start = next((i for i, line in enumerate(lines) if "error" in line.lower()), 0)
            shown = "\n".join(lines[start:])[-4000:].strip()
            yield None, f"`refgen generate` exited with {proc.returncode}:\n{shown}"
        else:
            yield built, None


def _environment_notes(committed: Mapping[str, Any], rebuilt_manifest: Path) -> list[str]:
    try:
        rebuilt = json.loads(rebuilt_manifest.read_bytes())
    except (OSError, ValueError):
        return []
    notes = []
    for section in ENVIRONMENT_SECTIONS:
        changed = _dict_diff(committed.get(section), rebuilt.get(section), section)
        if changed:
            shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
            notes.append(f"{section} differs from the original build: {shown}")
    return notes


# --- 4. the whole flow ----------------------------------------------------------------------------


def verify(
    spec_path: str | Path, reference: str | Path | None = None, tolerance: Tolerance | None = None
) -> VerifyResult:
    """Integrity, inputs, rebuild and comparison for one spec's artifact."""
    spec = load_spec(spec_path)
    artifact = Artifact(Path(reference).resolve() if reference else spec.output)
    if not artifact.reference.is_file():
        raise VerifyError(
            f"no reference to verify at {artifact.reference}; pass --reference PATH, or generate "
            f"it first with `refgen generate --spec {spec.path.name}`"
        )
    tol = tolerance or Tolerance(spec.tolerance, spec.tolerance)
    manifest: dict[str, Any] | None
    notes: list[str] = []
    try:
        manifest = read_manifest(artifact.manifest)
    except VerifyError as exc:
        manifest = None
        integrity = [Finding("integrity", artifact.manifest.name, str(exc))]
    else:
        integrity = []
    integrity = _dedupe(integrity + check_integrity(artifact, manifest))
    inputs = check_inputs(spec, manifest, model_files=True) if manifest is not None else []
    if manifest is not None and not artifact.statement.is_file():
        notes.append(f"no provenance statement {artifact.statement.name} next to the reference")
    if manifest is not None and isinstance(manifest.get("container"), Mapping):
        from refgen import manifest as manifest_mod

        if manifest_mod.container() is None:
            notes.append(
                f"the artifact was built in image {manifest['container'].get('image_id')}; this "
                "rebuild ran outside any image (`make verify` runs it in the pinned image)"
            )
    comparison = None
    with rebuild(spec) as (built, error):
        if built is not None:
            doc_a, raw_a = compare.load_reference(artifact.reference)
            doc_b, raw_b = compare.load_reference(built)
            comparison = compare.compare_documents(
                doc_a,
                doc_b,
                tolerance=tol,
                a_bytes=raw_a,
                b_bytes=raw_b,
                a_name=artifact.reference.name,
                b_name="rebuild",
            )
            if manifest is not None:
                notes += _environment_notes(manifest, Artifact(built).manifest)
    if integrity or inputs or error or comparison is None:
        verdict = Verdict.NOT_REPRODUCED
    else:
        verdict = comparison.verdict
    return VerifyResult(
        verdict=verdict,
        reference=artifact.reference.name,
        integrity=tuple(integrity),
        inputs=tuple(inputs),
        rebuild_error=error,
        comparison=comparison,
        notes=tuple(notes),
    )


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``refgen verify``."""
    add_spec_arguments(parser, "verify the artifact of")
    parser.add_argument(
        "--reference", type=Path, help="the JSON to verify (default: the spec's output path)"
    )
    compare.add_tolerance_arguments(parser)


def run_verify(args: argparse.Namespace) -> int:
    """Verify each spec's artifact, print reports; the exit code is the worst verdict's."""
    from refgen.spec import find_specs

    specs = list(args.spec) if args.spec else find_specs(args.specs_dir)
    if args.reference and len(specs) != 1:
        raise VerifyError("--reference needs exactly one --spec")
    results = []
    for path in specs:
        spec = load_spec(path)
        tol = Tolerance(
            spec.tolerance if args.atol is None else args.atol,
            spec.tolerance if args.rtol is None else args.rtol,
        )
        results.append(verify(path, args.reference, tol))
    if args.json:
        payload: Any = [r.to_json() for r in results] if len(results) > 1 else results[0].to_json()
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    else:
        if len(results) > 1:
            sys.stdout.write("".join(r.summary() + "\n" for r in results) + "\n")
        sys.stdout.write("\n".join(r.render() for r in results))
    return max(r.exit_code for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m refgen.verify ARGS`` is ``refgen verify ARGS``."""
    from refgen.cli import main as cli_main

    return cli_main(["verify", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
