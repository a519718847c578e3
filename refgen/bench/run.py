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
from collections.abc import Callable, Sequence
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
# The bigger-than-memory part at test-suite size: a tiny Llama (untied head, no q/k norms).
TINY_LLAMA_CONFIG: dict[str, Any] = {
    **checkpoint.LLAMA3_8B_CONFIG,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
# Budgets of the streamed runs: the peak-RSS targets at 1.7B and 8B. accelerate gets the
# same CPU budget as ours at 8B.
STREAM_BUDGET_SMALL = "2.5GB"
STREAM_BUDGET_LARGE = "6GB"
OFFLOAD_CPU_BUDGET = "6GB"
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
# The cost model: ours in memory and streamed for these numbers of prompts (issue targets: 1,000
# prompts streamed within 1.2x the in-memory wall), after three probe cases of 3 prompts: every
# layer at every position, the outputs of every attention and MLP block at every position, and the
# first with its float64 rounding floor (streamed only: in memory it holds the F32 and the F64
# weights at once, 20.7 GB at the 1.7B shape, more than the 2-core machine's memory allows).
COST_PROMPTS = (1, 3, 100, 1000)
ALL_PROBES = '[probes]\nhidden_states = "all"\npositions = "all"\nlogits = "last"\n'
MODULE_PROBES = (
    '[probes]\nmodules = ["model.layers.*.self_attn", "model.layers.*.mlp"]\npositions = "all"\n'
)
FLOOR_PROBES = ALL_PROBES + "rounding_floor = true\n"


def many_prompts(count: int) -> list[str]:
    """*count* distinct prompts: the benchmark's twelve, then the same again with a number
    after them."""
    base = [*PROMPTS, *EXTRA_PROMPTS]
    return [
        base[i % len(base)] + (f" {i // len(base)}" if i >= len(base) else "") for i in range(count)
    ]


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


def warm_page_cache(files: Sequence[Path]) -> float:
    """Read *files* once (seconds taken), so each program of a side-by-side run starts with the
    checkpoint in the page cache, whatever the program before it left there."""
    buffer = bytearray(8 << 20)
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


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
        "max_anon_gb": statistics.median(r.max_anon_bytes for r in runs) / 1e9,
        "runs": len(runs),
        "walls_s": [round(r.wall_s, 2) for r in runs],  # type: ignore[dict-item]
    }


class Bench:
    def __init__(
        self, cache: Path, config: dict[str, Any], runs: int, stream_budget: str | None = None
    ) -> None:
        self.cache = cache
        self.config = config
        self.runs = runs
        self.repo = checkpoint.repo_for(config)
        # With a budget, ours also runs layer-streamed (--stream --memory-budget BUDGET).
        self.stream_budget = stream_budget
        suffix = "" if config["model_type"] == "qwen3" else f"-{config['model_type']}"
        self.env = {**os.environ, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
        self.env.pop("HF_HUB_CACHE", None)
        self.work = cache / f"runs{suffix}"
        self.specs = cache / f"specs{suffix}"
        self.results: dict[str, Any] = {"config": {k: config[k] for k in sorted(config)}}
        self.counter = 0

    def child(
        self,
        label: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        rss_limit: int | None = None,
    ) -> ChildRun:
        self.counter += 1
        check = rss_limit is None  # a capped program may fail: that is its result
        run = run_child(argv, env or self.env, cwd=ROOT, check=check, rss_limit=rss_limit)
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
            "repo": self.repo,
            "revision": revision,
            "seconds": built.wall_s,
            "reused": info["built"] == 0,
            "weights_bytes": sum(p.stat().st_size for p in checkpoint.weight_files(self.snapshot)),
        }
        log(f"checkpoint {self.repo}@{revision} ready")
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.specs.mkdir(parents=True, exist_ok=True)
        main = self.write_spec("bench-prompts-3", PROMPTS)
        lock = main.with_suffix(".lock.json")
        # Re-recorded when it pins another revision or predates the BLAKE3 digests.
        recorded = json.loads(lock.read_text()) if lock.exists() else {}
        if recorded.get("revision") != revision or not all(
            "blake3" in f for f in recorded.get("files", [])
        ):
            self.child(
                "lock --offline", [PY, "-m", "refgen", "lock", "--spec", str(main), "--offline"]
            )
        self.main_spec = main

    def write_spec(self, name: str, prompts: Sequence[str], extra: str = "") -> Path:
        path = self.specs / f"{name}.toml"
        text = tiny.spec_text(name, f"{name}.json", self.repo, self.revision, prompts) + extra
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        main_lock = self.specs / "bench-prompts-3.lock.json"
        if name != "bench-prompts-3" and main_lock.exists():
            shutil.copyfile(main_lock, path.with_suffix(".lock.json"))  # same model files
        return path

    def ours_cli(self, out: Path, force: bool = True, stream: bool = False) -> list[str]:
        argv = [PY, "-m", "refgen", "generate", "--spec", str(self.main_spec)]
        if stream:
            argv += ["--stream", "--memory-budget", str(self.stream_budget)]
        return [*argv, "--output-dir", str(out), *(["--force"] if force else [])]

    def instrumented(
        self,
        spec: Path,
        tag: str,
        verify: bool = True,
        stream: str | None = None,
        memory: bool = False,
    ) -> tuple[ChildRun, dict[str, Any]]:
        """One child run of *spec* with the generator's phase timings: the default (``auto``),
        *stream* within that budget, or *memory*."""
        out = self.work / tag
        timings = self.work / f"{tag}.timings.json"
        argv = [PY, "-m", "refgen.bench.child", str(spec), str(out), str(timings)]
        argv += [] if verify else ["--no-verify"]
        argv += ["--stream", stream] if stream else ["--memory"] if memory else []
        run = self.child(tag, argv)
        phases = json.loads(timings.read_text())
        return run, {
            "wall_s": run.wall_s,
            "user_s": run.user_s,
            "sys_s": run.sys_s,
            "max_rss_gb": run.max_rss_bytes / 1e9,
            "max_anon_gb": run.max_anon_bytes / 1e9,
            **phases,
        }

    def compare(self) -> None:
        weights = checkpoint.weight_files(self.snapshot)[0]
        gbps, seconds = sha256_throughput(weights)
        self.results["sha256"] = {
            "gb_per_s": gbps,
            "seconds": seconds,
            "bytes": weights.stat().st_size,
        }
        log(f"sha256 (hashlib) {gbps:.2f} GB/s")
        # The original method twice: in torch's default environment (what the seed script
        # does), and under the determinism profile's environment, which gives the same numbers
        # as ours; the gap between the two is what the profile itself costs the forward.
        baselines = {"baseline": "", "baseline_profile": " under the profile"}
        base: dict[str, list[ChildRun]] = {name: [] for name in baselines}
        base_phases: dict[str, list[dict[str, float]]] = {name: [] for name in baselines}
        ours: list[ChildRun] = []
        streamed: list[ChildRun] = []
        digests = set()
        streamed_same_json = True
        programs = [*baselines, "ours", *(["streamed"] if self.stream_budget else [])]
        for i in range(self.runs):
            ours_out = self.work / f"ours-{i}"
            # Rotate the order, so that drifts of a shared machine hit every program alike.
            for which in programs[i % len(programs) :] + programs[: i % len(programs)]:
                if which in baselines:
                    out = self.work / f"{which}-{i}.json"
                    timings = Path(f"{out}.timings")
                    env = self.profiled_env() if which == "baseline_profile" else self.env
                    argv = [PY, "-m", "refgen.bench.baseline", str(self.snapshot), str(out)]
                    run = self.child(
                        f"baseline{baselines[which]} {i + 1}",
                        argv,
                        env={**env, "REFGEN_BENCH_TIMINGS": str(timings)},
                    )
                    base[which].append(run)
                    base_phases[which].append(json.loads(timings.read_text()))
                elif which == "ours":
                    ours.append(self.child(f"ours {i + 1}", self.ours_cli(ours_out)))
                else:
                    out = self.work / f"streamed-{i}"
                    streamed.append(
                        self.child(f"ours streamed {i + 1}", self.ours_cli(out, stream=True))
                    )
            digests.add(outputs_digest(ours_out))
            if streamed:
                name = f"{self.main_spec.stem}.json"
                same = (self.work / f"streamed-{i}" / name).read_bytes() == (
                    ours_out / name
                ).read_bytes()
                streamed_same_json = streamed_same_json and same
        if streamed:
            self.results["streamed"] = summarize(streamed)
            self.results["streamed_json_identical_to_in_memory"] = streamed_same_json
        for name in baselines:
            self.results[name] = summarize(base[name])
            self.results[f"{name}_phases"] = {
                k: statistics.median(p[k] for p in base_phases[name])
                for k in sorted(base_phases[name][0])
            }
        self.results["ours"] = summarize(ours)
        self.results["ours_outputs_identical_across_runs"] = len(digests) == 1

        # Same numbers as the original method, given the same determinism profile?
        reference = self.work / "ours-0" / f"{self.main_spec.stem}.json"
        self.results["numbers_identical_to_baseline_under_profile"] = numbers(
            self.work / "baseline_profile-0.json"
        ) == numbers(reference)
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

    def profiled_env(self) -> dict[str, str]:
        from refgen import determinism

        env = {**self.env, **determinism.PROFILE_ENV}
        for name in determinism.CLEARED_ENV:
            env.pop(name, None)
        return env

    def streamed_phases(self) -> None:
        """The split of one instrumented streamed run (layer reads happen inside 'forward')."""
        run, phases = self.instrumented(
            self.main_spec, "streamed-phases", stream=self.stream_budget
        )
        self.results["streamed_phases"] = {**phases, "io": run.io}

    def bigger_than_memory(self, cpu_budget: str, rss_cap: int) -> None:
        """Ours streamed, accelerate's disk offload and the original method, alternating.

        Each program runs ``self.runs`` times, in a rotating order, and its row is its
        median-wall run (with every wall listed). The two others run under a watchdog that kills
        them past *rss_cap* bytes of anonymous memory, so a program that cannot fit fails
        without taking the machine down; accelerate's offload folder is measured, then removed.
        Each program starts with the weights read once into the page cache.
        """
        snapshot = str(self.snapshot)
        files = checkpoint.weight_files(self.snapshot)
        runs: dict[str, list[dict[str, Any]]] = {
            "original": [],
            "ours_streamed": [],
            "accelerate": [],
        }
        identical = []
        for i in range(self.runs):
            ours_json = self.work / f"streamed-{i}" / f"{self.main_spec.stem}.json"
            accel_out = self.work / f"accelerate-{i}.json"
            order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
            for which in order:
                log(f"page cache warmed ({warm_page_cache(files):.1f} s)")
                if which == "original":
                    out = self.work / f"original-{i}.json"
                    env = {**self.env, "REFGEN_BENCH_TIMINGS": f"{out}.timings"}
                    argv = [PY, "-m", "refgen.bench.baseline", snapshot, str(out)]
                    run = self.child(f"original method, capped {i + 1}", argv, env, rss_cap)
                    runs[which].append(self.outcome(run, out))
                elif which == "ours_streamed":
                    tag = f"streamed-{i}"
                    run, phases = self.instrumented(self.main_spec, tag, stream=self.stream_budget)
                    runs[which].append({**self.outcome(run, ours_json), "phases": phases})
                else:
                    offload = self.work / "offload"
                    offload.mkdir(parents=True, exist_ok=True)
                    env = {
                        **self.profiled_env(),  # ours' kernels, so the numbers can be compared
                        "REFGEN_BENCH_TIMINGS": f"{accel_out}.timings",
                        "REFGEN_BENCH_OFFLOAD_FOLDER": str(offload),
                        "REFGEN_BENCH_OFFLOAD_CPU": cpu_budget,
                    }
                    argv = [PY, "-m", "refgen.bench.baseline", snapshot, str(accel_out)]
                    run = self.child(f"accelerate disk offload, capped {i + 1}", argv, env, rss_cap)
                    row = self.outcome(run, accel_out)
                    row["offload_folder_bytes"] = sum(
                        f.stat().st_size for f in offload.rglob("*") if f.is_file()
                    )
                    shutil.rmtree(offload)
                    runs[which].append(row)
            if ours_json.is_file() and accel_out.is_file():
                identical.append(numbers(ours_json) == numbers(accel_out))
        rows: dict[str, Any] = {}
        for which, outcomes in runs.items():
            walls = [o["wall_s"] for o in outcomes]
            median = sorted(outcomes, key=lambda o: o["wall_s"])[(len(outcomes) - 1) // 2]
            rows[which] = {**median, "walls_s": [round(w, 2) for w in walls]}
        if identical:
            rows["numbers_identical_to_accelerate_under_profile"] = all(identical)
        self.results["bigger_than_memory"] = {
            "cpu_budget": cpu_budget,
            "rss_cap_bytes": rss_cap,
            "runs": self.runs,
            **rows,
        }

    @staticmethod
    def outcome(run: ChildRun, output: Path) -> dict[str, Any]:
        if run.killed_at_rss_bytes is not None:
            result = (
                f"killed by the watchdog at {run.killed_at_rss_bytes / 1e9:.1f} GB of "
                "anonymous memory"
            )
        elif run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            result = f"failed, exit {run.returncode}: {last[:160]}"
        else:
            result = "completed"
        timings = Path(str(output) + ".timings")
        return {
            "result": result,
            "wall_s": run.wall_s,
            "user_s": run.user_s,
            "sys_s": run.sys_s,
            "max_rss_gb": run.max_rss_bytes / 1e9,
            "max_anon_gb": run.max_anon_bytes / 1e9,
            "io": run.io,
            "phases": json.loads(timings.read_text()) if timings.is_file() else {},
        }

    def floor(self, runs: int = 2, stand_in: int = 0) -> None:
        """The parts of a run, each alone (:mod:`refgen.bench.floor`), *runs* times: per part,
        the median wall and CPU seconds; with *stand_in*, the forwards run that many layers'
        weights at the full depth (a model bigger than memory)."""
        measured = []
        for i in range(runs):
            out = self.work / f"floor-{i}.json"
            argv = [PY, "-m", "refgen.bench.floor", str(self.snapshot), str(out)]
            argv += ["--stand-in-layers", str(stand_in)] if stand_in else []
            self.child(f"floor parts {i + 1}", argv)
            measured.append(json.loads(out.read_text()))
        self.results["floor"] = {
            part: {k: statistics.median(m[part][k] for m in measured) for k in measured[0][part]}
            for part in measured[0]
        }

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

    def cost_model(
        self, counts: Sequence[int], runs: int, save: Callable[[], object] = lambda: None
    ) -> None:
        """Ours in memory and streamed, alternating, *runs* times each, for the probe cases of 3
        prompts (:data:`ALL_PROBES`, :data:`MODULE_PROBES`, then :data:`FLOOR_PROBES` streamed
        only), then for each number of prompts in *counts* (smallest first). Each row: the
        median run's wall, CPU and peak RSS, its forward phase, and the JSON (and probe file) of
        both modes compared byte for byte (the floor row: its wall over the all-layer row's,
        streamed); *save* is called after each row."""
        both, streamed = ("memory", "stream"), ("stream",)
        cases = [
            ("cost-probes-all", list(PROMPTS), ALL_PROBES, both),
            ("cost-probes-modules", list(PROMPTS), MODULE_PROBES, both),
            ("cost-rounding-floor", list(PROMPTS), FLOOR_PROBES, streamed),
        ]
        cases += [(f"cost-{n}", many_prompts(n), "", both) for n in sorted(counts)]
        rows: list[dict[str, Any]] = []
        self.results["cost_model"] = {"runs": runs, "rows": rows}
        for name, prompts, extra, run_modes in cases:
            spec = self.write_spec(f"bench-{name}", prompts, extra)
            modes: dict[str, list[dict[str, Any]]] = {mode: [] for mode in run_modes}
            for i in range(runs):
                for mode in list(modes)[i % 2 :] + list(modes)[: i % 2]:
                    _, phases = self.instrumented(
                        spec,
                        f"{name}-{mode}-{i}",
                        stream=self.stream_budget if mode == "stream" else None,
                        memory=mode == "memory",
                    )
                    modes[mode].append(phases)
            outputs = [
                sorted(
                    (p.name, p.read_bytes())
                    for p in (self.work / f"{name}-{mode}-0").iterdir()
                    if p.suffix == ".safetensors" or p.name == f"bench-{name}.json"
                )
                for mode in modes
            ]
            row: dict[str, Any] = {"case": name, "prompts": len(prompts), "probes": bool(extra)}
            for mode, measured in modes.items():
                median = sorted(measured, key=lambda m: m["wall_s"])[(len(measured) - 1) // 2]
                row[mode] = {**median, "walls_s": [round(m["wall_s"], 2) for m in measured]}
            if "memory" in row:
                row["stream_over_memory_wall"] = row["stream"]["wall_s"] / row["memory"]["wall_s"]
                row["outputs_identical"] = outputs[0] == outputs[1]
            else:  # the floor: what the float64 run adds to the same probes without it
                probes = next(r for r in rows if r["case"] == "cost-probes-all")
                row["over_probes_all_wall"] = row["stream"]["wall_s"] / probes["stream"]["wall_s"]
            rows.append(row)
            save()

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
    b, o, bp = r["baseline"], r["ours"], r["baseline_profile"]
    f32 = sum(math.prod(s) for s in checkpoint.tensor_shapes(r["config"]).values()) * 4 / 1e9
    lines = [
        f"refgen bench: {r['checkpoint']['repo']}@{r['checkpoint']['revision'][:12]} "
        f"({r['checkpoint']['weights_bytes'] / 1e9:.2f} GB BF16, F32 weights {f32:.2f} GB), "
        f"{b['runs']} alternating runs each, medians",
        "",
        "| | wall s | user s | sys s | peak RSS GB | RSS / F32 weights |",
        "|---|---:|---:|---:|---:|---:|",
        f"| baseline (original script's from_pretrained F32) | {b['wall_s']:.2f} | "
        f"{b['user_s']:.2f} | "
        f"{b['sys_s']:.2f} | {b['max_rss_gb']:.2f} | {b['max_rss_gb'] / f32:.2f}x |",
        f"| baseline under the determinism profile's environment (ours' numbers) | "
        f"{bp['wall_s']:.2f} | {bp['user_s']:.2f} | {bp['sys_s']:.2f} | "
        f"{bp['max_rss_gb']:.2f} | {bp['max_rss_gb'] / f32:.2f}x |",
        f"| ours (`refgen generate --force`, verified) | {o['wall_s']:.2f} | {o['user_s']:.2f} | "
        f"{o['sys_s']:.2f} | {o['max_rss_gb']:.2f} | {o['max_rss_gb'] / f32:.2f}x |",
        *(
            [
                f"| ours streamed (`--stream --memory-budget {r['stream_budget']}`) | "
                f"{t['wall_s']:.2f} | {t['user_s']:.2f} | {t['sys_s']:.2f} | "
                f"{t['max_rss_gb']:.2f} | {t['max_rss_gb'] / f32:.2f}x |"
            ]
            if (t := r.get("streamed"))
            else []
        ),
        f"| ratio ours / baseline | {o['wall_s'] / b['wall_s']:.2f}x | | | "
        f"{o['max_rss_gb'] / b['max_rss_gb']:.2f}x | |",
        f"| ratio ours / baseline under the profile | {o['wall_s'] / bp['wall_s']:.2f}x | | | "
        f"{o['max_rss_gb'] / bp['max_rss_gb']:.2f}x | |",
        *(
            [
                f"| ratio ours streamed / ours (the default) | "
                f"{t['wall_s'] / o['wall_s']:.2f}x | | | "
                f"{t['max_rss_gb'] / o['max_rss_gb']:.2f}x | |"
            ]
            if (t := r.get("streamed"))
            else []
        ),
        "",
        f"- walls (s): baseline {b['walls_s']}, baseline under the profile {bp['walls_s']}, "
        f"ours {o['walls_s']}; 1-min load average "
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
    if "streamed" in r:
        lines.append(
            f"- ours streamed: walls (s) {r['streamed']['walls_s']}; JSON byte-identical to the "
            f"in-memory run: {r['streamed_json_identical_to_in_memory']}"
        )
    if "streamed_phases" in r:
        lines.append(f"- split of a streamed run (s): {split_of(r['streamed_phases'])}")
    if "phases" in r:
        p, q = r["phases"], r["phases_no_verify"]
        order = [k for k in ("import", "verify", "load", "forward", "write") if k in p]
        split = ", ".join(f"{k} {p[k]:.2f}" for k in order)
        overhead = (p["wall_s"] - q["wall_s"]) / q["wall_s"]
        base_split, profiled_split = (
            ", ".join(f"{k} {r[name][k]:.2f}" for k in ("import", "load", "forward", "write"))
            for name in ("baseline_phases", "baseline_profile_phases")
        )
        lines += [
            f"- split of our run (s, median of 2 instrumented runs): {split}; "
            f"in-process total {p['total_in_process']:.2f}, wall {p['wall_s']:.2f}",
            f"- split of the baseline (s, median of its timed runs): {base_split}; under the "
            f"profile: {profiled_split}",
            f"- hashing ran {p.get('verify_thread', 0.0):.2f} s on its own thread, beside import "
            f"and load; the load waited {p.get('verify_wait', 0.0):.2f} s for it",
            f"- verification overhead: wall {p['wall_s']:.2f} s with hashing vs "
            f"{q['wall_s']:.2f} s without = {overhead * 100:+.1f}%",
        ]
    if "floor" in r:
        lines += fmt_floor(r)
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


def floor_parts(f: dict[str, Any], names: dict[str, str]) -> tuple[str, float]:
    """The floor's parts as "name wall / CPU", and their CPU seconds in all."""
    parts = ", ".join(f"{names[k]} {f[k]['wall_s']:.2f} / {f[k]['cpu_s']:.2f}" for k in names)
    return parts, sum(f[k]["cpu_s"] for k in names)


def fmt_floor(r: dict[str, Any]) -> list[str]:
    """Where the default run's seconds go, against its parts measured alone."""
    f, o, p = r["floor"], r["ours"], r.get("phases", {})
    names = {
        "import": "import (torch, transformers, tokenizer, model class)",
        "hash": "hashing the weights (BLAKE3, one thread)",
        "read": "reading and up-casting the weights to F32",
        "forward": "the forwards, weights in memory",
    }
    parts, cpu = floor_parts(f, names)
    ours_cpu = o["user_s"] + o["sys_s"]
    # Back to back on one machine: the hashing beside the import (the other core is idle while
    # the import runs), then the reads, then the forwards.
    serial = max(f["import"]["wall_s"], f["hash"]["wall_s"]) + f["read"]["wall_s"]
    serial += f["forward"]["wall_s"]
    return [
        f"- the floor, each part alone (`python -m refgen.bench.floor`, median of 2 runs, wall / "
        f"CPU s): {parts}; CPU in all {cpu:.2f} s; back to back, with the hashing beside the "
        f"import: {serial:.2f} s",
        f"- the default run (`refgen generate --force`): wall {o['wall_s']:.2f} s, CPU "
        f"{ours_cpu:.2f} s = the parts' {cpu:.2f} s {ours_cpu - cpu:+.2f} s"
        + (f"; its split: {split_of(p)}" if p else ""),
    ]


def fmt_cost(cost: dict[str, Any]) -> str:
    """The cost model: each case in memory and streamed, and how the forward grows with the
    number of prompts (its increment per extra prompt over the 1-prompt row)."""
    lines = [
        f"Cost model (ours in memory vs streamed, {cost['runs']} alternating runs each, the "
        "median-wall run shown):",
        "",
        "| case | prompts | mode | wall s | user + sys s | peak RSS GB | forward s | "
        "forward s per extra prompt | streamed / in-memory wall | outputs identical |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    first = next((row for row in cost["rows"] if not row["probes"]), None)  # fewest prompts
    for row in cost["rows"]:
        for mode in ("memory", "stream"):
            if mode not in row:
                continue
            m = row[mode]
            growth = ""
            if first is not None and not row["probes"] and row["prompts"] > first["prompts"]:
                extra = row["prompts"] - first["prompts"]
                growth = f"{(m['forward'] - first[mode]['forward']) / extra:.3f}"
            ratio = same = ""
            if "over_probes_all_wall" in row:
                ratio = f"{row['over_probes_all_wall']:.2f}x cost-probes-all's streamed wall"
                same = "(streamed only)"
            elif mode == "stream":
                ratio = f"{row['stream_over_memory_wall']:.2f}x"
                same = str(row["outputs_identical"])
            lines.append(
                f"| {row['case']} | {row['prompts']} | {mode} | {m['wall_s']:.2f} | "
                f"{m['user_s'] + m['sys_s']:.2f} | {m['max_rss_gb']:.2f} | {m['forward']:.2f} | "
                f"{growth} | {ratio} | {same} |"
            )
    return "\n".join(lines)


def split_of(p: dict[str, Any]) -> str:
    keys = ("import", "load", "forward", "write", "verify_wait")
    text = ", ".join(f"{k} {p[k]:.2f}" for k in keys if k in p)
    return text + (f" (hashing thread {p['verify_thread']:.2f})" if "verify_thread" in p else "")


def gb(n: float | None) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def fmt_big(r: dict[str, Any]) -> str:
    """The bigger-than-memory section: the median-wall run of each program, side by side."""
    big = r["bigger_than_memory"]
    f32 = sum(math.prod(s) for s in checkpoint.tensor_shapes(r["config"]).values()) * 4 / 1e9
    cap = big["rss_cap_bytes"] / 1e9
    lines = [
        f"refgen bench: {r['checkpoint']['repo']}@{r['checkpoint']['revision'][:12]} "
        f"({r['checkpoint']['weights_bytes'] / 1e9:.2f} GB BF16 in "
        f"{r['checkpoint']['files']} files, F32 weights {f32:.2f} GB), 3 prompts, "
        f"{big['runs']} alternating runs each, the median-wall run shown",
        "",
        "| program | result | wall s | user s | peak RSS GB | peak anonymous GB | disk read GB "
        "| read() GB | disk written GB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "ours_streamed": f"ours streamed (`--stream --memory-budget {r['stream_budget']}`)",
        "accelerate": f"accelerate disk offload (max_memory cpu {big['cpu_budget']}, "
        f"anonymous memory cap {cap:.0f} GB)",
        "original": f"original method (from_pretrained F32, anonymous memory cap {cap:.0f} GB)",
    }
    for key, label in names.items():
        row = big[key]
        io = row["io"]
        lines.append(
            f"| {label} | {row['result']} | {row['wall_s']:.1f} | {row['user_s']:.1f} | "
            f"{row['max_rss_gb']:.2f} | {row['max_anon_gb']:.2f} | {gb(io.get('read_bytes'))} | "
            f"{gb(io.get('rchar'))} | {gb(io.get('write_bytes'))} |"
        )
    ours, accel = big["ours_streamed"], big["accelerate"]
    lines += [
        "",
        f"- walls (s): ours {ours['walls_s']}, accelerate {accel['walls_s']}, original method "
        f"{big['original']['walls_s']}",
        f"- split of ours (s): {split_of(ours['phases'])}; the layer reads happen inside "
        "'forward' (each layer read once for all prompts)",
        f"- split of accelerate (s): {split_of(accel['phases']) or '(did not finish)'}; "
        f"offload folder {accel['offload_folder_bytes'] / 1e9:.2f} GB after the run (removed)",
        f"- split of the original method (s): {split_of(big['original']['phases']) or '-'}",
    ]
    if "floor" in r:
        f = r["floor"]
        names = {
            "import": "import",
            "hash": "hashing (BLAKE3, one thread)",
            "read": "reading and up-casting to F32",
            "forward": f"the forwards ({f['meta']['layers']:.0f} layers run with the weights of "
            f"{f['meta']['stand_in_layers']:.0f}, in memory)",
        }
        parts, cpu = floor_parts(f, names)
        lines.append(
            f"- the floor, each part alone (`python -m refgen.bench.floor --stand-in-layers`, "
            f"median of 2 runs, wall / CPU s): {parts}; CPU in all {cpu:.2f} s, at least "
            f"{cpu / 2:.2f} s of wall on two cores; ours used {ours['user_s'] + ours['sys_s']:.2f} "
            "CPU-s"
        )
    if accel["result"] == "completed" and ours["result"] == "completed":
        lines.append(
            f"- ours / accelerate: wall {ours['wall_s'] / accel['wall_s']:.2f}x (run by run: "
            + ", ".join(
                f"{a / b:.2f}x" for a, b in zip(ours["walls_s"], accel["walls_s"], strict=True)
            )
            + f"), peak RSS "
            f"{ours['max_rss_gb'] / accel['max_rss_gb']:.2f}x; numbers identical to "
            "accelerate's under the determinism profile: "
            f"{big.get('numbers_identical_to_accelerate_under_profile')}"
        )
    return "\n".join(lines)


def fmt_scale(small: dict[str, Any], large: dict[str, Any]) -> str:
    """Model size x mode x wall x peak RSS, from both sections of this run."""

    def params(r: dict[str, Any]) -> str:
        count = sum(math.prod(s) for s in checkpoint.tensor_shapes(r["config"]).values())
        return f"{count / 1e9:.1f}B"

    rows: list[tuple[str, str, Any, str | None]] = [
        (params(small), "original method (from_pretrained F32)", small["baseline"], "completed"),
        (
            params(small),
            "original method, under the determinism profile's environment",
            small["baseline_profile"],
            "completed",
        ),
        (params(small), "ours, the default (`generate --force`)", small["ours"], "completed"),
        (params(small), "ours streamed (`--stream`)", small.get("streamed"), "completed"),
    ]
    big = large["bigger_than_memory"]
    rows += [
        (params(large), "original method (from_pretrained F32)", big["original"], None),
        (params(large), "accelerate disk offload", big["accelerate"], None),
        (params(large), "ours streamed", big["ours_streamed"], None),
    ]
    lines = [
        "| model | mode | wall s | peak RSS GB | peak anonymous GB | result |",
        "|---|---|---:|---:|---:|---|",
    ]
    for size, mode, row, result in rows:
        if row:
            lines.append(
                f"| {size} | {mode} | {row['wall_s']:.1f} | {row['max_rss_gb']:.2f} | "
                f"{row['max_anon_gb']:.2f} | "
                f"{result or row['result']} |"
            )
    return "\n".join(lines)


def main(
    cache: Path,
    runs: int,
    shape: str,
    scaling: bool,
    rss_cap: int = 12 * 10**9,
    cost_prompts: Sequence[int] = COST_PROMPTS,
    cost_runs: int = 2,
) -> int:
    """The whole benchmark (arguments: ``python -m refgen.bench``, in :mod:`refgen.cli`).

    *shape*: ``real`` (Qwen3-1.7B-Base), ``8b`` (that, then a Llama-3-8B-shaped checkpoint with
    ours streamed, accelerate's disk offload and the original method, the last two killed past
    *rss_cap* bytes of anonymous memory) or ``tiny`` (both parts at test-suite sizes).
    *cost_prompts*: the cost model's numbers of prompts (none: no cost model), each run
    *cost_runs* times per mode.
    """
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    cache = cache.resolve()
    tiny = shape == "tiny"
    bench = Bench(
        cache,
        TINY_CONFIG if tiny else checkpoint.QWEN3_1_7B_BASE_CONFIG,
        runs,
        stream_budget=STREAM_BUDGET_SMALL,
    )
    bench.results["stream_budget"] = STREAM_BUDGET_SMALL
    large: Bench | None = None

    def save() -> str:
        """The tables of what is measured so far, written out: a run stopped in its longest
        part (the cost model's biggest row) keeps everything before it."""
        bench.results["bench_seconds"] = time.perf_counter() - start
        bench.results["load_average_1min"] = [load_before, os.getloadavg()[0]]
        table = fmt_table(bench.results)
        if large is not None and "bigger_than_memory" in large.results:
            table += "\n\n" + fmt_big(large.results)
            table += "\n\nScaling (this run):\n\n" + fmt_scale(bench.results, large.results)
        if "cost_model" in bench.results:
            table += "\n\n" + fmt_cost(bench.results["cost_model"])
        (bench.cache / "results.json").write_text(json.dumps(bench.results, indent=2))
        (bench.cache / "results.md").write_text(table + "\n")
        return table

    bench.prepare()
    bench.compare()
    save()
    bench.streamed_phases()
    bench.phases()
    bench.floor()
    save()
    if scaling:
        bench.scaling()
        save()
    if shape in ("8b", "tiny"):
        config = TINY_LLAMA_CONFIG if tiny else checkpoint.LLAMA3_8B_CONFIG
        large = Bench(cache, config, runs, stream_budget=STREAM_BUDGET_LARGE)
        large.prepare()
        large.results["stream_budget"] = STREAM_BUDGET_LARGE
        large.results["checkpoint"]["files"] = len(checkpoint.weight_files(large.snapshot))
        large.bigger_than_memory(OFFLOAD_CPU_BUDGET, rss_cap)
        # The forwards' floor at the full depth in the memory of an eighth of the layers.
        large.floor(stand_in=max(1, config["num_hidden_layers"] // 8))
        bench.results["large"] = large.results
        save()
    if cost_prompts:  # last: its biggest rows take the longest
        bench.cost_model(cost_prompts, cost_runs, save)
    table = save()
    print(table)
    print(
        f"\n(bench took {bench.results['bench_seconds']:.0f} s; results in {bench.cache}/results.*)"
    )
    return 0
