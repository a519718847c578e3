"""The benchmark: baseline vs ``refgen generate`` at the real model's shape, side by side.

Every measured program is a child process timed from outside (``os.wait4``: wall time, CPU
times, peak RSS). Baseline and ours alternate, so drifts of a shared machine hit both alike; the
table reports medians and the ratios ours/baseline. See ``python -m refgen.bench --help``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refgen import tiny
from refgen.bench import checkpoint
from refgen.bench.baseline import PROMPTS
from refgen.bench.measure import ChildRun, run_child

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / ".cache" / "bench"
PY = sys.executable

# A shape small enough for the test suite (the tiny checkpoint's), on the same code path.
TINY_CONFIG: dict[str, Any] = {
    **checkpoint.QWEN3_1_7B_BASE_CONFIG,
    **tiny.SHAPE,
    "max_window_layers": 2,
}
EXTRA_PROMPTS = [
    "The children of the village played on",
    "One day a storm came from the",
    "The people waited, told stories by the",
    "When the sky finally cleared, the water",
    "A model that reads text predicts the",
    "Numbers such as 1, 2, 3 and",
    "The capital of Italy is",
    "Three plus three equals",
    "The fishermen went out every morning before",
]
PROMPT_COUNTS = (1, 3, 12)
PROMPT_LENGTHS = (5, 50, 500)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def prompt_of_length(tokenizer_json: Path, tokens: int) -> str:
    """Text from the corpus that the checkpoint's tokenizer turns into exactly *tokens* ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    text = checkpoint.CORPUS * (1 + tokens // 50)
    ids = tok.encode(text, add_special_tokens=False).ids
    for cut in range(tokens, min(len(ids), tokens + 40)):
        candidate = tok.decode(ids[:cut]).strip()
        if len(tok.encode(candidate, add_special_tokens=False).ids) == tokens:
            return candidate
    raise RuntimeError(f"no corpus prefix tokenizes to exactly {tokens} tokens")


def sha256_throughput(path: Path) -> tuple[float, float]:
    """(GB/s, seconds) of hashlib over a file, read in 8 MiB blocks (page cache warm after)."""
    digest = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            digest.update(view[:n])
    seconds = time.perf_counter() - start
    return path.stat().st_size / seconds / 1e9, seconds


def numbers(path: Path) -> list[Any]:
    """What the model computed, from a reference JSON: tokens, top-10 and residual per prompt."""
    cases = json.loads(path.read_text())["test_cases"]
    return [[c["prompt"], c["tokens"], c["top_10"], c["last_residual_f32"]] for c in cases]


def outputs_digest(folder: Path) -> str:
    """One hash over the JSON and manifest of a run (they must be byte-identical run to run)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def summarize(runs: Sequence[ChildRun]) -> dict[str, float]:
    return {
        "wall_s": statistics.median(r.wall_s for r in runs),
        "user_s": statistics.median(r.user_s for r in runs),
        "sys_s": statistics.median(r.sys_s for r in runs),
        "max_rss_gb": statistics.median(r.max_rss_bytes for r in runs) / 1e9,
        "runs": len(runs),
        "walls_s": [round(r.wall_s, 2) for r in runs],  # type: ignore[dict-item]
    }


class Bench:
    def __init__(self, cache: Path, config: dict[str, Any], runs: int) -> None:
        self.cache = cache
        self.config = config
        self.runs = runs
        self.env = {**os.environ, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
        self.env.pop("HF_HUB_CACHE", None)
        self.work = cache / "runs"
        self.results: dict[str, Any] = {"config": {k: config[k] for k in sorted(config)}}
        self.counter = 0

    def child(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> ChildRun:
        self.counter += 1
        run = run_child(argv, env or self.env, cwd=ROOT)
        log(
            f"[{self.counter}] {label}: {run.wall_s:.2f} s, "
            f"peak RSS {run.max_rss_bytes / 1e9:.2f} GB"
        )
        return run

    def prepare(self) -> None:
        argv = [PY, "-m", "refgen.bench.checkpoint", str(self.cache / "hub")]
        built = self.child("checkpoint", [*argv, json.dumps(self.config)])
        info = json.loads(built.stdout)
        revision, self.snapshot = info["revision"], Path(info["snapshot"])
        self.revision = revision
        self.results["checkpoint"] = {
            "repo": checkpoint.BENCH_REPO,
            "revision": revision,
            "seconds": built.wall_s,
            "reused": info["built"] == 0,
            "weights_bytes": (self.snapshot / "model.safetensors").stat().st_size,
        }
        log(f"checkpoint {checkpoint.BENCH_REPO}@{revision} ready")
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.specs = self.cache / "specs"
        self.specs.mkdir(parents=True, exist_ok=True)
        main = self.write_spec("bench-prompts-3", PROMPTS)
        lock = main.with_suffix(".lock.json")
        if not lock.exists() or json.loads(lock.read_text()).get("revision") != revision:
            self.child(
                "lock --offline", [PY, "-m", "refgen", "lock", "--spec", str(main), "--offline"]
            )
        self.main_spec = main

    def write_spec(self, name: str, prompts: Sequence[str]) -> Path:
        path = self.specs / f"{name}.toml"
        text = tiny.spec_text(name, f"{name}.json", checkpoint.BENCH_REPO, self.revision, prompts)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        main_lock = self.specs / "bench-prompts-3.lock.json"
        if name != "bench-prompts-3" and main_lock.exists():
            shutil.copyfile(main_lock, path.with_suffix(".lock.json"))  # same model files
        return path

    def ours_cli(self, out: Path, force: bool = True) -> list[str]:
        argv = [PY, "-m", "refgen", "generate", "--spec", str(self.main_spec)]
        return [*argv, "--output-dir", str(out), *(["--force"] if force else [])]

    def instrumented(
        self, spec: Path, tag: str, verify: bool = True
    ) -> tuple[ChildRun, dict[str, Any]]:
        out = self.work / tag
        timings = self.work / f"{tag}.timings.json"
        argv = [PY, "-m", "refgen.bench.child", str(spec), str(out), str(timings)]
        run = self.child(tag, [*argv, *([] if verify else ["--no-verify"])])
        phases = json.loads(timings.read_text())
        return run, {"wall_s": run.wall_s, "max_rss_gb": run.max_rss_bytes / 1e9, **phases}

    def compare(self) -> None:
        weights = self.snapshot / "model.safetensors"
        gbps, seconds = sha256_throughput(weights)
        self.results["sha256"] = {
            "gb_per_s": gbps,
            "seconds": seconds,
            "bytes": weights.stat().st_size,
        }
        log(f"sha256 (hashlib) {gbps:.2f} GB/s")
        baseline: list[ChildRun] = []
        base_phases: list[dict[str, float]] = []
        ours: list[ChildRun] = []
        digests = set()
        for i in range(self.runs):
            base_out = self.work / f"baseline-{i}.json"
            ours_out = self.work / f"ours-{i}"
            base_argv = [PY, "-m", "refgen.bench.baseline", str(self.snapshot), str(base_out)]
            base_env = {**self.env, "REFGEN_BENCH_TIMINGS": str(base_out) + ".timings"}
            for which in ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline"):
                if which == "baseline":
                    baseline.append(self.child(f"baseline {i + 1}", base_argv, env=base_env))
                    base_phases.append(
                        json.loads(Path(base_env["REFGEN_BENCH_TIMINGS"]).read_text())
                    )
                else:
                    ours.append(self.child(f"ours {i + 1}", self.ours_cli(ours_out)))
            digests.add(outputs_digest(ours_out))
        self.results["baseline"] = summarize(baseline)
        self.results["baseline_phases"] = {
            k: statistics.median(p[k] for p in base_phases) for k in sorted(base_phases[0])
        }
        self.results["ours"] = summarize(ours)
        self.results["ours_outputs_identical_across_runs"] = len(digests) == 1

        # Same numbers as the original method, given the same determinism profile?
        from refgen import determinism

        profiled = {**self.env, **determinism.PROFILE_ENV}
        for name in determinism.CLEARED_ENV:
            profiled.pop(name, None)
        base_out = self.work / "baseline-profile.json"
        self.child(
            "baseline under the determinism profile",
            [PY, "-m", "refgen.bench.baseline", str(self.snapshot), str(base_out)],
            env=profiled,
        )
        reference = self.work / "ours-0" / f"{self.main_spec.stem}.json"
        self.results["numbers_identical_to_baseline_under_profile"] = numbers(base_out) == numbers(
            reference
        )
        self.results["numbers_identical_to_baseline_default_env"] = numbers(
            self.work / "baseline-0.json"
        ) == numbers(reference)

        # An up-to-date run: same command without --force, outputs already there.
        noop = [
            self.child(f"no-op {i + 1}", self.ours_cli(self.work / "ours-0", force=False))
            for i in range(3)
        ]
        self.results["noop"] = summarize(noop)
        self.results["noop_outputs_unchanged"] = outputs_digest(self.work / "ours-0") in digests

    def phases(self) -> None:
        with_verify, without = [], []
        for i in range(2):
            with_verify.append(self.instrumented(self.main_spec, f"phases-{i}")[1])
            without.append(self.instrumented(self.main_spec, f"noverify-{i}", verify=False)[1])
        keys = sorted({k for p in with_verify for k in p})
        self.results["phases"] = {
            k: statistics.median(p.get(k, 0.0) for p in with_verify) for k in keys
        }
        self.results["phases_no_verify"] = {
            k: statistics.median(p.get(k, 0.0) for p in without) for k in keys
        }

    def scaling(self) -> None:
        rows = []
        tokenizer = self.snapshot / "tokenizer.json"
        cases: list[tuple[str, list[str]]] = [
            (f"prompts-{n}", (PROMPTS + EXTRA_PROMPTS)[:n]) for n in PROMPT_COUNTS
        ]
        cases += [(f"length-{n}", [prompt_of_length(tokenizer, n)]) for n in PROMPT_LENGTHS]
        for name, prompts in cases:
            spec = self.write_spec(f"bench-{name}", prompts)
            _, phases = self.instrumented(spec, f"scaling-{name}")
            produced = json.loads(
                (self.work / f"scaling-{name}" / f"bench-{name}.json").read_text()
            )
            tokens = [len(c["tokens"]) for c in produced["test_cases"]]
            rows.append({"case": name, "prompts": len(prompts), "tokens": tokens, **phases})
        self.results["scaling"] = rows


def fmt_table(r: dict[str, Any]) -> str:
    b, o = r["baseline"], r["ours"]
    f32 = sum(math.prod(s) for s in checkpoint.tensor_shapes(r["config"]).values()) * 4 / 1e9
    lines = [
        f"refgen bench: {checkpoint.BENCH_REPO}@{r['checkpoint']['revision'][:12]} "
        f"({r['checkpoint']['weights_bytes'] / 1e9:.2f} GB BF16, F32 weights {f32:.2f} GB), "
        f"{b['runs']} alternating runs each, medians",
        "",
        "| | wall s | user s | sys s | peak RSS GB | RSS / F32 weights |",
        "|---|---:|---:|---:|---:|---:|",
        f"| baseline (original script's from_pretrained F32) | {b['wall_s']:.2f} | "
        f"{b['user_s']:.2f} | "
        f"{b['sys_s']:.2f} | {b['max_rss_gb']:.2f} | {b['max_rss_gb'] / f32:.2f}x |",
        f"| ours (`refgen generate --force`, verified) | {o['wall_s']:.2f} | {o['user_s']:.2f} | "
        f"{o['sys_s']:.2f} | {o['max_rss_gb']:.2f} | {o['max_rss_gb'] / f32:.2f}x |",
        f"| ratio ours / baseline | {o['wall_s'] / b['wall_s']:.2f}x | | | "
        f"{o['max_rss_gb'] / b['max_rss_gb']:.2f}x | |",
        "",
        f"- walls (s): baseline {b['walls_s']}, ours {o['walls_s']}; 1-min load average "
        f"{r['load_average_1min'][0]:.1f} at start, {r['load_average_1min'][1]:.1f} at end "
        "(other work on the machine inflates every figure; the ratios are the comparable part)",
        f"- sha256 (hashlib, 8 MiB reads, page cache): {r['sha256']['gb_per_s']:.2f} GB/s "
        f"({r['sha256']['bytes'] / 1e9:.2f} GB in {r['sha256']['seconds']:.2f} s)",
        f"- up-to-date no-op run (no --force): {r['noop']['wall_s']:.2f} s median "
        f"(outputs unchanged: {r['noop_outputs_unchanged']})",
        f"- ours byte-identical across runs: {r['ours_outputs_identical_across_runs']}; numbers "
        f"identical to the baseline under the determinism profile: "
        f"{r['numbers_identical_to_baseline_under_profile']} (baseline in the default "
        f"environment: {r['numbers_identical_to_baseline_default_env']})",
    ]
    if "phases" in r:
        p, q = r["phases"], r["phases_no_verify"]
        order = [k for k in ("import", "verify", "load", "forward", "write") if k in p]
        split = ", ".join(f"{k} {p[k]:.2f}" for k in order)
        overhead = (p["wall_s"] - q["wall_s"]) / q["wall_s"]
        bp = r["baseline_phases"]
        base_split = ", ".join(f"{k} {bp[k]:.2f}" for k in ("import", "load", "forward", "write"))
        floor = p["import"] + p["forward"]
        lines += [
            f"- split of our run (s, median of 2 instrumented runs): {split}; "
            f"in-process total {p['total_in_process']:.2f}, wall {p['wall_s']:.2f}",
            f"- split of the baseline (s, median of its timed runs): {base_split}",
            f"- our import + forward alone (nothing left to optimise in loading) is {floor:.2f} s "
            f"= {floor / b['wall_s']:.2f}x the baseline's median wall",
            f"- hashing ran {p.get('verify_thread', 0.0):.2f} s on its own thread, beside import "
            f"and load; the load waited {p.get('verify_wait', 0.0):.2f} s for it",
            f"- verification overhead: wall {p['wall_s']:.2f} s with hashing vs "
            f"{q['wall_s']:.2f} s without = {overhead * 100:+.1f}%",
        ]
    if "scaling" in r:
        lines += [
            "",
            "| scaling case | prompts | tokens per prompt | wall s | forward s | peak RSS GB |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for row in r["scaling"]:
            lines.append(
                f"| {row['case']} | {row['prompts']} | {row['tokens']} | {row['wall_s']:.2f} | "
                f"{row.get('forward', 0.0):.2f} | {row['max_rss_gb']:.2f} |"
            )
    return "\n".join(lines)


def main(cache: Path, runs: int, shape: str, scaling: bool) -> int:
    """The whole benchmark (arguments: ``python -m refgen.bench``, in :mod:`refgen.cli`)."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    bench = Bench(
        cache.resolve(),
        checkpoint.QWEN3_1_7B_BASE_CONFIG if shape == "real" else TINY_CONFIG,
        runs,
    )
    bench.prepare()
    bench.compare()
    bench.phases()
    if scaling:
        bench.scaling()
    bench.results["bench_seconds"] = time.perf_counter() - start
    bench.results["load_average_1min"] = [load_before, os.getloadavg()[0]]
    table = fmt_table(bench.results)
    (bench.cache / "results.json").write_text(json.dumps(bench.results, indent=2))
    (bench.cache / "results.md").write_text(table + "\n")
    print(table)
    print(
        f"\n(bench took {bench.results['bench_seconds']:.0f} s; results in {bench.cache}/results.*)"
    )
    return 0
