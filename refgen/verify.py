"""The auditor's rebuild: check a published reference against its manifest, rebuild it, compare.

Steps, each reported:

1. **Integrity** - the committed files against what they claim
   (:func:`refgen.audit.check_integrity`).
2. **Inputs** - what is available now against what the manifest names, every model file in the
   local Hugging Face cache included (:func:`refgen.audit.check_inputs`).
3. **Rebuild** - ``refgen generate`` in a fresh process (the determinism profile must be applied
   before torch is imported) into a temporary folder, removed afterwards even when interrupted.
4. **Compare** - :mod:`refgen.compare` between the committed JSON and the rebuilt one.

The verdict is the comparison's, except that a failed integrity check, a differing input or a
failed rebuild make it NOT REPRODUCED: a rebuild from other inputs cannot confirm the claim that
the artifact was made from the manifest's. On a CPU without AVX2 and FMA there is no rebuild: the
verdict is NOT COMPARABLE (unless integrity or inputs already fail). Exit codes are
:class:`refgen.compare.Verdict`'s (0 bit for bit, 10 within tolerance, 11 not reproduced, 12 not
comparable); 2 when verification could not run (no spec, model not in the cache).

:func:`refgen.audit.is_up_to_date` is the same input check, cheap, for ``generate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refgen import cleanup, compare, determinism, jsonio
from refgen.artifact import Artifact
from refgen.audit import (
    Finding,
    check_inputs,
    check_integrity,
    dedupe,
    dict_diff,
    read_manifest,
)
from refgen.compare import Comparison, Tolerance, Verdict
from refgen.errors import ArtifactError, VerifyError
from refgen.spec import Spec, load_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REBUILD_PREFIX = "refgen-verify-"
# Manifest sections that describe the host and software, not inputs: differences are notes.
ENVIRONMENT_SECTIONS = ("packages", "torch_build", "platform", "determinism", "generator")


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
    not_comparable: str | None = None  # why no rebuild was attempted on this CPU

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
        if self.verdict is Verdict.NOT_COMPARABLE:
            return f"{head} - {self.not_comparable}"
        parts = []
        if self.integrity:
            parts.append("committed files fail their manifest (" + _names(self.integrity) + ")")
        if self.inputs:
            parts.append("inputs differ from the manifest (" + _names(self.inputs) + ")")
        if self.rebuild_error:
            parts.append("rebuild failed")
        if self.not_comparable:
            parts.append("no rebuild: " + self.not_comparable.split(":", 1)[0])
        if self.comparison is not None:
            if self.comparison.verdict is Verdict.NOT_REPRODUCED:
                first = self.comparison.differences[0] if self.comparison.differences else None
                parts.append(
                    f"{self.comparison.difference_count} difference(s) in the rebuild"
                    + (f", first at {first.path}: {first.detail}" if first else "")
                )
            else:
                parts.append(f"the rebuild itself was {self.comparison.verdict.value}")
            if self.comparison.first_probe_difference:
                parts.append(self.comparison.first_probe_difference)
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
        if self.not_comparable:
            lines += [f"Rebuild skipped: {self.not_comparable}"]
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
            "not_comparable": self.not_comparable,
            "comparison": self.comparison.to_json() if self.comparison else None,
            "notes": list(self.notes),
        }


def _names(findings: Sequence[Finding]) -> str:
    return ", ".join(dict.fromkeys(f.subject for f in findings))


# --- 3. rebuild ---------------------------------------------------------------------------------

# Variables holding a path that the rebuild must read as the caller meant it: the child runs in
# the project's folder, so a relative HF_HOME would otherwise name another (empty) cache.
PATH_VARIABLES = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "XDG_CACHE_HOME",
    "REFGEN_REQUIREMENTS_LOCK",
    "TMPDIR",
)


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with every relative path made absolute against its cwd."""
    env = dict(os.environ if environ is None else environ)
    for name in PATH_VARIABLES:
        if env.get(name):
            env[name] = os.path.abspath(os.path.expanduser(env[name]))
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep)
        )
    return env


@contextmanager
def rebuild(spec: Spec) -> Iterator[tuple[Path | None, str | None]]:
    """Run the generator into a temporary folder; yields (reference path or None, error text).

    The folder and the child process are cleaned up on every exit, Ctrl-C and SIGTERM included.
    """
    with cleanup.temporary_directory(prefix=REBUILD_PREFIX) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "refgen",
            "generate",
            "--spec",
            str(spec.path),
            "--output-dir",
            str(tmp),
            "--force",
        ]
        # Registered, so an interrupted verify stops the child (which removes its own model
        # view first) before the folder it writes into is removed.
        with cleanup.child_process(
            cmd,
            cwd=PROJECT_ROOT,
            env=child_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as proc:
            log, _ = proc.communicate()
        built = tmp / spec.output.name
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
        rebuilt = jsonio.read_json(rebuilt_manifest)
    except (OSError, ValueError):
        return []
    notes = []
    for section in ENVIRONMENT_SECTIONS:
        changed = dict_diff(committed.get(section), rebuilt.get(section), section)
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
            f"it first with `refgen generate --spec {spec.display}`"
        )
    tol = tolerance or Tolerance(spec.tolerance, spec.tolerance)
    manifest: dict[str, Any] | None
    notes: list[str] = []
    try:
        manifest = read_manifest(artifact.manifest)
    except ArtifactError as exc:
        manifest = None
        integrity = [Finding("integrity", artifact.manifest.name, str(exc))]
    else:
        integrity = []
    integrity = dedupe(integrity + check_integrity(artifact, manifest))
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
    error: str | None = None
    not_comparable: str | None = None
    lacks = determinism.cpu_lacks()
    if lacks:
        # The generator would refuse (or, without the profile, compute other bytes): a numeric
        # mismatch here would say nothing about the reference. Integrity and inputs still count.
        not_comparable = (
            f"this CPU lacks {' and '.join(lacks)}: the determinism profile cannot hold here, "
            "so a rebuild cannot confirm or refute the reference; verify on an x86-64 CPU "
            "with AVX2 and FMA"
        )
    else:
        with rebuild(spec) as (built, error):
            if built is not None:
                # with the probe files beside each (X.safetensors), when either has one
                comparison = compare.compare_files(
                    artifact.reference, built, tol, a_name=artifact.reference.name, b_name="rebuild"
                )
                if manifest is not None:
                    notes += _environment_notes(manifest, Artifact(built).manifest)
    if integrity or inputs or error:
        verdict = Verdict.NOT_REPRODUCED
    elif comparison is not None:
        verdict = comparison.verdict
    else:
        verdict = Verdict.NOT_COMPARABLE if not_comparable else Verdict.NOT_REPRODUCED
    return VerifyResult(
        verdict=verdict,
        reference=artifact.reference.name,
        integrity=tuple(integrity),
        inputs=tuple(inputs),
        rebuild_error=error,
        comparison=comparison,
        notes=tuple(notes),
        not_comparable=not_comparable,
    )


def verify_specs(
    spec_paths: Sequence[Path], reference: Path | None, atol: float | None, rtol: float | None
) -> list[VerifyResult]:
    """Verify each spec's artifact; a tolerance left as None is the spec's ``[verify]`` one."""
    if reference and len(spec_paths) != 1:
        raise VerifyError("--reference needs exactly one --spec")
    results = []
    for path in spec_paths:
        spec = load_spec(path)
        tol = Tolerance(
            spec.tolerance if atol is None else atol,
            spec.tolerance if rtol is None else rtol,
        )
        results.append(verify(path, reference, tol))
    return results


def report(results: Sequence[VerifyResult], as_json: bool) -> str:
    """The reports of several results, human-readable or JSON."""
    if as_json:
        payload: Any = [r.to_json() for r in results] if len(results) > 1 else results[0].to_json()
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"
    head = "".join(r.summary() + "\n" for r in results) + "\n" if len(results) > 1 else ""
    return head + "\n".join(r.render() for r in results)
