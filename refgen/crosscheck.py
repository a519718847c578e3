"""Same bytes on other CPUs, checked on one machine: a reference built under emulated CPUs.

qemu-user (``qemu-x86_64 -cpu MODEL``) runs the same, unmodified interpreter and torch with that
model's CPUID: vendor, family, feature flags. torch, MKL and oneDNN choose their kernels from
CPUID, so they choose what they would on that CPU (qemu's TCG has no AVX-512: every model runs
at most AVX2). For each subject (a checkpoint built on the fly) this builds the reference
natively and under each CPU model, with the determinism profile and, as the control, without
it (the original method's environment), and prints one table: CPU, vendor as the child saw it
through CPUID, the capability torch chose, the JSON's SHA-256 and the verdict against the
native build.

A profiled run that differs from native fails the check (exit 11). The control is expected to
differ somewhere: it is what shows the check can fail. A CPU without AVX2 is refused by the
generator (exit 4) and reported as such. ``--bench`` times the forward natively under each
variant (alternating, medians) for choosing the profile by evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import compare, determinism, tiny
from refgen.errors import RefgenError, UnsupportedCpuError

log = logging.getLogger("refgen")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NATIVE = "native"
PROFILE = "profile"
QEMU = "qemu-x86_64"
QEMU_PACKAGE = "qemu-user"
# AVX2-class models qemu 7.2's TCG runs (two Intel, two AMD generations), and one without AVX2.
DEFAULT_CPUS = ("Haswell-v4", "Skylake-Client-v4", "EPYC-Rome", "EPYC-Milan", "Westmere")
DEFAULT_VARIANTS = (PROFILE, determinism.CONTROL)
EXIT_DIFFERS = compare.Verdict.NOT_REPRODUCED.exit_code
RUN_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Subject:
    """A checkpoint built on the fly: Qwen3's architecture at some shape."""

    name: str
    repo: str
    config: dict[str, Any]
    std: float


SUBJECTS: dict[str, Subject] = {
    "tiny": Subject("tiny", tiny.TINY_REPO, tiny.CONFIG, 0.08),
    # Big enough for MKL's and oneDNN's blocked kernels (K and N well past their block sizes,
    # GQA with 4 query heads per KV head), small enough for about a minute per emulated run.
    "larger": Subject(
        "larger",
        "refgen-test/crosscheck-qwen3",
        tiny.CONFIG
        | {
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 4,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "head_dim": 64,
            "vocab_size": 4096,
        },
        0.02,
    ),
}


@dataclass(frozen=True)
class Run:
    """One generate run: where, how, and what came out."""

    subject: str
    variant: str
    cpu: str
    returncode: int
    seconds: float
    sha256: str | None = None
    vendor: str | None = None
    brand: str | None = None
    capability: str | None = None
    error: str | None = None
    reference: Path | None = None

    @property
    def refused(self) -> bool:
        return self.returncode == UnsupportedCpuError.exit_code


@dataclass(frozen=True)
class Row:
    run: Run
    verdict: str
    differs: bool


def qemu() -> str:
    found = shutil.which(QEMU)
    if found is None:
        raise RefgenError(
            f"{QEMU} not found: the emulated CPUs need qemu-user "
            f"(Debian/Ubuntu: `apt-get install {QEMU_PACKAGE}`)"
        )
    return found


def cpu_models() -> set[str]:
    """The CPU models this qemu knows (``qemu-x86_64 -cpu help``: ``x86 NAME  description``)."""
    proc = subprocess.run([qemu(), "-cpu", "help"], capture_output=True, text=True, timeout=60)
    return {
        parts[1]
        for line in proc.stdout.splitlines()
        if len(parts := line.split()) >= 2 and parts[0] == "x86"
    }


def check_cpus(cpus: Sequence[str]) -> None:
    """Every emulated CPU model named is one qemu knows: an unknown one is an error now, not a
    run that 'differs from native' later."""
    emulated = [c for c in cpus if c != NATIVE]
    if not emulated:
        return
    known = cpu_models()
    unknown = [c for c in emulated if c not in known]
    if unknown:
        raise RefgenError(
            f"--cpus: unknown CPU model(s) {', '.join(unknown)} for {QEMU}; see "
            f"`{QEMU} -cpu help` for the models it knows (e.g. {', '.join(DEFAULT_CPUS)})."
        )


def prepare(subject: Subject, folder: Path) -> Path:
    """Build the subject's checkpoint into ``folder/hf-home``, write and lock its spec."""
    hf_home = folder / "hf-home"
    checkpoint = tiny.build(hf_home / "hub", subject.repo, config=subject.config, std=subject.std)
    specs = folder / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    spec = tiny.write_spec(specs, checkpoint.revision, "../out.json", repo=subject.repo)
    subprocess.run(
        [sys.executable, "-m", "refgen", "lock", "--spec", str(spec), "--offline"],
        env=_child_env(hf_home),
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )
    return spec


# Variables that pin a library's kernels to the host's CPU. Under emulation they would name a
# CPU the process does not have: OPENBLAS_CORETYPE=Haswell (set on some hosts for their
# OpenBLAS) makes numpy's OpenBLAS run AVX2 code on an emulated Westmere, which dies of SIGILL
# at `import numpy`. Without it, OpenBLAS picks its kernels from the emulated CPUID, as on that CPU.
HOST_CPU_VARIABLES = ("OPENBLAS_CORETYPE",)


def emulated_env(env: Mapping[str, str]) -> dict[str, str]:
    """*env* for a process under ``qemu-x86_64 -cpu MODEL``: without :data:`HOST_CPU_VARIABLES`."""
    return {k: v for k, v in env.items() if k not in HOST_CPU_VARIABLES}


def _child_env(hf_home: Path, cpu: str = NATIVE) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "REFGEN_"))}
    # the same interpreter (a virtualenv's included: qemu-user keeps argv[0], so python finds
    # its pyvenv.cfg) with this checkout first on the path
    env.update({"HF_HOME": str(hf_home), "PYTHONPATH": str(PROJECT_ROOT)})
    return env if cpu == NATIVE else emulated_env(env)


def generate(spec: Path, variant: str, cpu: str, out: Path, subject: str) -> Run:
    """``refgen generate`` natively or under ``qemu-x86_64 -cpu CPU``, into ``out``."""
    prefix = [] if cpu == NATIVE else [qemu(), "-cpu", cpu]
    cmd = [*prefix, sys.executable, "-m", "refgen", "generate", "--spec", str(spec)]
    cmd += ["--output-dir", str(out), "--force"]
    if variant != PROFILE:
        cmd += ["--profile-variant", variant]
    log.info("crosscheck: %s / %s / %s ...", subject, variant, cpu)
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        env=_child_env(spec.parent.parent / "hf-home", cpu),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    seconds = time.monotonic() - start
    log.info(
        "crosscheck: %s / %s / %s: exit %d, %.0f s",
        subject,
        variant,
        cpu,
        proc.returncode,
        seconds,
    )
    reference = out / "out.json"
    if proc.returncode != 0 or not reference.is_file():
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        text = (errors[-1] if errors else proc.stderr.strip()[-500:]) or "no output"
        return Run(subject, variant, cpu, proc.returncode, seconds, error=text)
    manifest = json.loads((out / "out.manifest.json").read_bytes())
    seen = manifest["platform"].get("cpuid") or {}
    return Run(
        subject,
        variant,
        cpu,
        proc.returncode,
        seconds,
        sha256=hashlib.sha256(reference.read_bytes()).hexdigest(),
        vendor=seen.get("vendor"),
        brand=seen.get("brand"),
        capability=seen.get("torch_cpu_capability"),
        reference=reference,
    )


def judge(runs: Sequence[Run]) -> list[Row]:
    """Each run against the native run of the same subject and variant."""
    native = {(r.subject, r.variant): r for r in runs if r.cpu == NATIVE}
    rows = []
    for r in runs:
        base = native.get((r.subject, r.variant))
        if r.refused:
            rows.append(Row(r, "refused (CPU lacks AVX2 / FMA)", False))
        elif r.sha256 is None or r.reference is None:
            rows.append(Row(r, f"FAILED (exit {r.returncode}): {r.error}", True))
        elif r.cpu == NATIVE:
            rows.append(Row(r, "baseline", False))
        elif base is None or base.reference is None:
            rows.append(Row(r, "no native baseline", True))
        elif r.sha256 == base.sha256:
            rows.append(Row(r, "identical", False))
        else:
            doc_a, raw_a = compare.load_reference(base.reference)
            doc_b, raw_b = compare.load_reference(r.reference)
            result = compare.compare_documents(doc_a, doc_b, a_bytes=raw_a, b_bytes=raw_b)
            rows.append(Row(r, "DIFFERS: " + result.summary().lower(), True))
    return rows


def table(rows: Sequence[Row]) -> str:
    """Markdown, as pasted into the README."""
    lines = [
        "| subject | profile | CPU (qemu -cpu) | vendor (CPUID) | torch ISA | sha256 | vs native "
        "| wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for row in rows:
        r = row.run
        variant = "on" if r.variant == PROFILE else r.variant
        vendor = f"{r.vendor} ({r.brand})" if r.vendor else "-"
        digest = r.sha256[:16] if r.sha256 else "-"
        verdict = row.verdict.replace("|", "\\|")  # `|diff|` must not end the cell
        lines.append(
            f"| {r.subject} | {variant} | {r.cpu} | {vendor} | {r.capability or '-'} | "
            f"{digest} | {verdict} | {r.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


@contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        if path.exists() and not path.is_dir():
            raise RefgenError(f"--work-dir {path} exists and is not a folder; name a folder.")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RefgenError(
                f"--work-dir: cannot create {path}: {exc.strerror}; name a folder you can write."
            ) from None
        yield path.resolve()
    else:
        with tempfile.TemporaryDirectory(prefix="refgen-crosscheck-") as tmp:
            yield Path(tmp)


def crosscheck(
    subjects: Sequence[str],
    cpus: Sequence[str],
    variants: Sequence[str],
    *,
    jobs: int = 2,
    workdir: Path | None = None,
) -> list[Row]:
    """Every subject x variant x (native + cpus); at most ``jobs`` runs at a time."""
    check_cpus(cpus)  # qemu there, every model known: fail before building anything
    with _workdir(workdir) as root:
        specs = {name: prepare(SUBJECTS[name], root / name) for name in subjects}
        plan = [
            (name, variant, cpu)
            for name in subjects
            for variant in variants
            for cpu in dict.fromkeys([NATIVE, *cpus])
        ]

        def one(item: tuple[str, str, str]) -> Run:
            name, variant, cpu = item
            out = root / name / "runs" / f"{variant}-{cpu}"
            return generate(specs[name], variant, cpu, out, name)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            runs = list(pool.map(one, plan))
        return judge(runs)


# --- forward-time benchmark (choosing the profile) -------------------------------------------

_BENCH_CHILD = """
import json, sys, time
from refgen import determinism
determinism.apply_environment(sys.argv[2] if sys.argv[2] != "profile" else None)
import torch
determinism.configure_torch()
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.randint(0, 256, (1, int(sys.argv[4])), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    model(input_ids=ids)
    times = []
    for _ in range(int(sys.argv[3])):
        start = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - start)
print(json.dumps({"times": times, "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def bench(
    subject: str, variants: Sequence[str], rounds: int, workdir: Path | None, tokens: int = 64
) -> str:
    """Native forward time per variant: ``rounds`` alternating child processes, 5 forwards each;
    a markdown table of medians and ratios to the profile (ratios from one run, never asserted).
    """
    with _workdir(workdir) as root:
        spec = prepare(SUBJECTS[subject], root / subject)
        snapshot = next((root / subject / "hf-home" / "hub").glob("models--*/snapshots/*"))
        times: dict[str, list[float]] = {v: [] for v in variants}
        capability: dict[str, str] = {}
        for _ in range(rounds):
            for variant in variants:
                proc = subprocess.run(
                    [sys.executable, "-c", _BENCH_CHILD, str(snapshot), variant, "5", str(tokens)],
                    env=_child_env(spec.parent.parent / "hf-home"),
                    cwd=PROJECT_ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(proc.stdout.splitlines()[-1])
                times[variant] += result["times"]
                capability[variant] = result["capability"]
    base = statistics.median(times[variants[0]])
    lines = [
        f"forward of {tokens} tokens, subject {subject!r}, native, {rounds} alternating processes "
        f"x 5 forwards, medians:",
        "",
        "| variant | torch ISA | forward ms | ratio to " + variants[0] + " |",
        "| --- | --- | ---: | ---: |",
    ]
    for variant in variants:
        median = statistics.median(times[variant])
        lines.append(
            f"| {variant} | {capability[variant]} | {median * 1000:.1f} | {median / base:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def run(
    subjects: str, cpus: str, variants: str, *, jobs: int, workdir: Path | None, bench_rounds: int
) -> int:
    """``refgen crosscheck``: print the table; exit 11 if a profiled run differs from native."""
    if bench_rounds < 0:
        raise RefgenError(
            f"--bench must be a number of rounds >= 1 (0: no bench), got {bench_rounds}."
        )
    if jobs < 1:
        raise RefgenError(f"--jobs must be at least 1, got {jobs}.")
    names = _split(subjects, SUBJECTS)
    kinds = _split(variants, [PROFILE, *determinism.VARIANTS])
    if bench_rounds:
        sys.stdout.write(bench(names[-1], kinds, bench_rounds, workdir))
        return 0
    rows = crosscheck(names, [c for c in cpus.split(",") if c], kinds, jobs=jobs, workdir=workdir)
    sys.stdout.write(table(rows))
    failed = [r for r in rows if r.differs and r.run.variant == PROFILE]
    if determinism.CONTROL in kinds:
        control = [r for r in rows if r.differs and r.run.variant == determinism.CONTROL]
        sys.stdout.write(
            f"\ncontrol (profile off): {len(control)} run(s) differ from native"
            + (" - the check can fail\n" if control else " - this matrix did not show it\n")
        )
    sys.stdout.write(
        f"profile on: {len(failed)} run(s) differ from native\n"
        if failed
        else "profile on: every CPU gave the native bytes (or was refused for lacking AVX2)\n"
    )
    return EXIT_DIFFERS if failed else 0


def _split(value: str, known: Sequence[str] | dict[str, Any]) -> list[str]:
    names = [v for v in value.split(",") if v]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        given = ", ".join(unknown) or "(none)"
        raise RefgenError(f"unknown name(s) {given}; known: {', '.join(known)}")
    return names
