"""Other CPUs on this machine: CPUID as the process sees it, the AVX2 refusal, and the cross-CPU
check under qemu-user (``qemu-x86_64 -cpu MODEL`` runs this interpreter with that model's CPUID).

The fast version of ``nox -s crosscheck``: the tiny checkpoint natively and under one emulated
Intel and one emulated AMD CPU, with the determinism profile (same bytes everywhere) and without
it (the control: it must differ somewhere, or the check proves nothing). Outside CI the tests
that need qemu skip when it is missing; under ``CI=true`` that is a failure (.ci/run installs
Debian's qemu-user).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TinySetup, make_setup, refgen_env, run_refgen

from refgen import cpu, crosscheck, determinism

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
X86 = cpu.read() is not None


@pytest.fixture(scope="module")
def qemu() -> str:
    found = shutil.which("qemu-x86_64")
    if found is None:
        reason = "qemu-x86_64 is not installed (Debian: apt-get install qemu-user)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}: CI must run the cross-CPU tests (see .ci/run)")
        pytest.skip(reason)
    if not X86:
        pytest.skip("not an x86-64 host: nothing to compare the emulated CPUs with")
    return found


def emulated(
    qemu: str, model: str, *args: str, hf_home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` under ``qemu-x86_64 -cpu MODEL``, this checkout first on the path."""
    env = crosscheck.emulated_env(refgen_env(hf_home or ROOT / "no-hf-home"))
    return subprocess.run(
        [qemu, "-cpu", model, sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


# --- CPUID ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file() or not X86, reason="needs Linux x86-64")
def test_cpuid_agrees_with_proc_cpuinfo_on_the_host() -> None:
    """Natively, the kernel's view and CPUID's are the same CPU: vendor, model, brand, flags."""
    text = Path("/proc/cpuinfo").read_text()

    def field(name: str) -> str:
        match = re.search(rf"^{name}\s*:\s*(.*)$", text, re.MULTILINE)
        assert match, name
        return match.group(1).strip()

    seen = cpu.read()
    assert seen is not None
    assert seen.vendor == field("vendor_id")
    assert (seen.family, seen.model, seen.stepping) == (
        int(field("cpu family")),
        int(field("model")),
        int(field("stepping")),
    )
    assert seen.brand == field("model name")
    kernel = set(field("flags").split())
    checked = set(cpu._FLAGS) - {"osxsave"}
    assert set(seen.flags) == kernel & checked


@pytest.mark.parametrize(
    ("model", "vendor", "family", "number", "avx2"),
    [
        # qemu's CPU model definitions (target/i386/cpu.c), not the host's CPU
        ("Haswell-v4", "GenuineIntel", 6, 60, True),
        ("EPYC-Rome", "AuthenticAMD", 23, 49, True),
        ("Westmere", "GenuineIntel", 6, 44, False),
    ],
)
def test_cpuid_sees_the_emulated_cpu(
    qemu: str, model: str, vendor: str, family: int, number: int, avx2: bool
) -> None:
    proc = emulated(qemu, model, "-m", "refgen.cpu")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert (seen["vendor"], seen["family"], seen["model"]) == (vendor, family, number)
    assert ("avx2" in seen["flags"]) is avx2
    assert ("fma" in seen["flags"]) is avx2
    # qemu's TCG has no AVX-512, whatever the host has
    assert not [f for f in seen["flags"] if f.startswith("avx512")]


# --- a CPU without AVX2 ---------------------------------------------------------------------------


def test_generate_refuses_a_cpu_without_avx2_up_front(qemu: str, tiny_copy: TinySetup) -> None:
    out = tiny_copy.spec.parent.parent / "westmere-out"
    proc = emulated(
        qemu,
        "Westmere",
        "-m",
        "refgen",
        "generate",
        "--spec",
        str(tiny_copy.spec),
        "--output-dir",
        str(out),
        hf_home=tiny_copy.hf_home,
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("refgen: error: this CPU (Westmere"), proc.stderr
    assert "lacks AVX2 and FMA" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "forward" not in proc.stderr  # refused before anything was loaded or run
    assert not out.exists()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    """A reference generated natively (as a publisher with AVX2 would), in a private folder."""
    base = tmp_path_factory.mktemp("published")
    setup = make_setup(base / "hf-home", base / "specs", "../out/tiny_qwen3_reference.json")
    run_refgen("generate", "--spec", setup.spec, hf_home=setup.hf_home)
    return setup


def test_verify_without_avx2_is_not_comparable(qemu: str, published: TinySetup) -> None:
    args = ("-m", "refgen", "verify", "--spec", str(published.spec))
    proc = emulated(qemu, "Westmere", *args, hf_home=published.hf_home)
    assert proc.returncode == 12, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("NOT COMPARABLE: tiny_qwen3_reference.json - this CPU lacks AVX2")
    report = json.loads(
        emulated(qemu, "Westmere", *args, "--json", hf_home=published.hf_home).stdout
    )
    assert report["verdict"] == "NOT_COMPARABLE"
    assert report["exit_code"] == 12
    assert report["comparison"] is None and report["rebuild_error"] is None
    # the same artifact on an AVX2 CPU is verified as usual
    assert run_refgen("verify", "--spec", published.spec, hf_home=published.hf_home).returncode == 0


def test_verify_without_avx2_still_reports_tampering(
    qemu: str, published: TinySetup, tmp_path: Path
) -> None:
    """Integrity does not depend on the CPU: a modified file is NOT REPRODUCED even there."""
    root = tmp_path / "copy"
    shutil.copytree(published.spec.parent.parent, root, symlinks=True)
    reference = root / "out" / "tiny_qwen3_reference.json"
    reference.write_bytes(reference.read_bytes().replace(b'"dtype": "float32"', b'"dtype": "f32"'))
    proc = emulated(
        qemu,
        "Westmere",
        "-m",
        "refgen",
        "verify",
        "--spec",
        str(root / "specs" / published.spec.name),
        hf_home=root / "hf-home",
    )
    assert proc.returncode == 11, proc.stdout + proc.stderr
    assert "committed files fail their manifest (tiny_qwen3_reference.json" in proc.stdout
    assert "this CPU lacks AVX2" in proc.stdout


# --- the cross-CPU check --------------------------------------------------------------------------


def test_profile_gives_the_native_bytes_on_emulated_intel_and_amd(
    qemu: str, tmp_path: Path
) -> None:
    """The tiny reference built natively, under an emulated Intel Haswell and an emulated AMD
    EPYC-Rome: with the profile one SHA-256; without it (the control) not."""
    rows = crosscheck.crosscheck(
        ["tiny"],
        ["Haswell-v4", "EPYC-Rome"],
        [crosscheck.PROFILE, determinism.CONTROL],
        jobs=2,
        workdir=tmp_path,
    )
    runs = {(r.run.variant, r.run.cpu): r.run for r in rows}
    assert all(r.returncode == 0 for r in runs.values()), [r.error for r in runs.values()]
    for variant in (crosscheck.PROFILE, determinism.CONTROL):
        # each child saw the emulated CPU through CPUID (recorded in its manifest)
        assert runs[(variant, "Haswell-v4")].vendor == "GenuineIntel"
        assert runs[(variant, "EPYC-Rome")].vendor == "AuthenticAMD"
    profiled = {cpu: r for (v, cpu), r in runs.items() if v == crosscheck.PROFILE}
    assert {r.capability for r in profiled.values()} == {"AVX2"}
    assert len({r.sha256 for r in profiled.values()}) == 1, {
        c: r.sha256 for c, r in profiled.items()
    }
    control = {cpu: r.sha256 for (v, cpu), r in runs.items() if v == determinism.CONTROL}
    assert len(set(control.values())) > 1, control
    assert not [r for r in rows if r.differs and r.run.variant == crosscheck.PROFILE]
    # the control is recorded as such, never as the profile
    manifest = json.loads(
        (tmp_path / "tiny" / "runs" / "off-native" / "out.manifest.json").read_text()
    )
    assert manifest["determinism"]["variant"] == "off"
    assert determinism.PROFILE_NAME not in manifest["determinism"]["environment"].values()
    table = crosscheck.table(rows)
    assert table.count("| identical |") == 2
    assert "| baseline |" in table
