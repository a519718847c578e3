"""The benchmark's own machinery: checkpoint builder, child measurement, the fast loader.

Speed is never asserted here (timing is the benchmark's job); these tests check that what the
benchmark measures and loads is right, on shapes small enough for the suite.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import locked

from refgen.bench import checkpoint
from refgen.bench.measure import ChildFailed, run_child
from refgen.bench.run import TINY_CONFIG
from refgen.errors import IntegrityError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return checkpoint.build(tmp_path_factory.mktemp("bench") / "hub", TINY_CONFIG)


def test_checkpoint_matches_the_model_class_and_the_cache_layout(
    bench_tiny: tuple[str, Path],
) -> None:
    import torch
    from huggingface_hub import snapshot_download
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    revision, snapshot = bench_tiny
    hub = snapshot.parents[2]
    repo_dir = snapshot.parents[1]
    assert (repo_dir / "refs" / "main").read_text() == revision
    assert (
        Path(
            snapshot_download(
                checkpoint.BENCH_REPO, revision=revision, cache_dir=hub, local_files_only=True
            )
        )
        == snapshot
    )
    weights = snapshot / "model.safetensors"
    assert weights.resolve().name == hashlib.sha256(weights.read_bytes()).hexdigest()

    # Shapes as transformers' own Qwen3 defines them (lm_head tied, so not stored).
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**TINY_CONFIG))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tensors = load_file(weights)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}
    norm = tensors["model.norm.weight"].float()
    proj = tensors["model.layers.0.mlp.up_proj.weight"].float()
    assert abs(norm.mean().item() - 1.0) < 0.02
    assert abs(proj.std().item() - checkpoint.WEIGHT_STD) < 0.003


def test_checkpoint_bytes_are_deterministic(bench_tiny: tuple[str, Path], tmp_path: Path) -> None:
    revision, snapshot = bench_tiny
    again, other = checkpoint.build(tmp_path / "hub", TINY_CONFIG)
    assert again == revision
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (snapshot / name).read_bytes()
    different, _ = checkpoint.build(tmp_path / "hub2", TINY_CONFIG, seed=1)
    assert different != revision


def test_real_shape_has_the_published_parameter_count() -> None:
    shapes = checkpoint.tensor_shapes(checkpoint.QWEN3_1_7B_BASE_CONFIG)
    # Qwen3-1.7B: 1.72e9 parameters with the LM head tied to the embeddings, 310 tensors.
    assert len(shapes) == 310
    count = sum(math.prod(s) for s in shapes.values())
    assert 1.70e9 < count < 1.74e9


def test_child_peak_rss_is_measured_from_outside() -> None:
    # Measured from a small parent, as the benchmark does: an exec'd child's ru_maxrss starts at
    # its parent's RSS at fork time (the kernel keeps the pre-exec high-water mark).
    driver = (
        "import json, os, sys\n"
        "from refgen.bench.measure import run_child\n"
        "big = \"b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])\"\n"
        "runs = [run_child([sys.executable, '-c', c], os.environ) for c in (big, 'pass')]\n"
        "print(json.dumps([r.max_rss_bytes for r in runs]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", driver], cwd=ROOT, check=True, capture_output=True, text=True
    )
    big, small = json.loads(out.stdout)
    assert big > 300 << 20
    assert small < 100 << 20  # this child's own peak, not the largest child's
    with pytest.raises(ChildFailed, match="boom"):
        run_child([sys.executable, "-c", "raise SystemExit('boom')"], os.environ)


def test_the_watchdog_stops_a_child_past_its_rss_cap_and_io_is_read() -> None:
    grow = (
        "import time\nblocks = []\nfor _ in range(40):\n"
        "    b = bytearray(50 << 20); b[::4096] = b'x' * len(b[::4096]); blocks.append(b)\n"
        "    time.sleep(0.05)\n"
    )
    run = run_child([sys.executable, "-c", grow], os.environ, check=False, rss_limit=300 << 20)
    assert run.killed_at_rss_bytes is not None and run.killed_at_rss_bytes > 300 << 20
    assert run.returncode == -9
    assert run.max_rss_bytes < 1 << 30  # stopped long before its 2 GB
    assert run.max_anon_bytes >= run.killed_at_rss_bytes
    small = run_child([sys.executable, "-c", "open(__import__('os').devnull).read()"], os.environ)
    assert small.killed_at_rss_bytes is None
    assert small.io["rchar"] > 0  # read from /proc/PID/io before the child was reaped


def test_the_watchdog_caps_anonymous_memory_not_mapped_file_pages(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\1" * (200 << 20))
    touch = (
        "import mmap, sys, time\n"
        "f = open(sys.argv[1], 'rb')\n"
        "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
        "total = sum(m[i] for i in range(0, len(m), 4096))\n"
        "time.sleep(0.2)\n"
    )
    argv = [sys.executable, "-c", touch, str(data)]
    mapped = run_child(argv, os.environ, check=False, rss_limit=100 << 20)
    assert mapped.returncode == 0 and mapped.killed_at_rss_bytes is None
    assert mapped.max_rss_bytes > 200 << 20  # the file's pages were resident
    assert 0 < mapped.max_anon_bytes < 100 << 20


def test_fast_loader_builds_the_same_model_as_from_pretrained(
    bench_tiny: tuple[str, Path],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from refgen.load import memory as load_memory

    _, snapshot = bench_tiny
    expected = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(snapshot.iterdir())
    }
    ours, digests = load_memory.load_verified_model(snapshot, locked(expected), "float32", "sdpa")
    assert digests == {n: {"sha256": h} for n, h in expected.items()}
    theirs = AutoModelForCausalLM.from_pretrained(
        snapshot, dtype=torch.float32, attn_implementation="sdpa"
    )
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert dict(ours.named_buffers()).keys() == dict(theirs.named_buffers()).keys()
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    assert not ours.training
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    with torch.inference_mode():
        x = ours(input_ids=ids, output_hidden_states=True, use_cache=False)
        y = theirs(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert torch.equal(x.logits, y.logits)
    assert all(torch.equal(p, q) for p, q in zip(x.hidden_states, y.hidden_states, strict=True))


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])
@pytest.mark.parametrize("where", [0.5, 0.0])
def test_fast_loader_refuses_a_changed_byte(
    bench_tiny: tuple[str, Path], tmp_path: Path, victim: str, where: float
) -> None:
    from refgen.load import memory as load_memory

    _, snapshot = bench_tiny
    folder = tmp_path / "snap"
    folder.mkdir()
    for p in snapshot.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    data = bytearray((folder / victim).read_bytes())
    data[int(len(data) * where)] ^= 0x01  # 0.0: inside the safetensors header length
    (folder / victim).write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        load_memory.load_verified_model(folder, locked(expected), "float32", hint="fetch it again")
    message = str(info.value)
    assert victim in message
    assert expected[victim] in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert "fetch it again" in message


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_tiny_shape(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    args = ["--shape", "tiny", "--runs", "2", "--no-scaling", "--cache", str(tmp_path)]
    args += ["--cost-prompts", "1,40", "--cost-runs", "1"]
    subprocess.run(
        [sys.executable, "-m", "refgen.bench", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["ours_outputs_identical_across_runs"] is True
    assert results["numbers_identical_to_baseline_under_profile"] is True
    assert results["noop_outputs_unchanged"] is True
    assert results["baseline"]["max_rss_gb"] > 0.1 and results["ours"]["max_rss_gb"] > 0.1
    for program in ("baseline", "baseline_profile", "ours", "streamed"):
        assert len(results[program]["walls_s"]) == 2, program  # each alternated, each timed
    assert results["streamed_json_identical_to_in_memory"] is True
    big = results["large"]["bigger_than_memory"]
    for program in ("ours_streamed", "accelerate", "original"):
        assert big[program]["result"] == "completed", big[program]
        assert len(big[program]["walls_s"]) == 2  # alternating runs, the median one reported
        assert round(big[program]["wall_s"], 2) in big[program]["walls_s"]
    assert big["numbers_identical_to_accelerate_under_profile"] is True
    table = (tmp_path / "results.md").read_text()
    assert "| ratio ours / baseline |" in table
    assert "| ratio ours / baseline under the profile |" in table
    assert "split of our run" in table
    assert "| ours streamed (`--stream --memory-budget" in table
    assert "accelerate disk offload" in table and "Scaling (this run)" in table
    # The floor: each part of a run alone, against the default run's CPU time.
    for part in ("import", "hash", "read", "forward"):
        assert results["floor"][part]["wall_s"] > 0 and results["floor"][part]["cpu_s"] > 0
    assert results["floor"]["meta"]["prompts"] == 3
    # At the large shape, the forwards run every layer with the weights of an eighth of them.
    large_floor = results["large"]["floor"]
    for part in ("import", "hash", "read", "forward"):
        assert large_floor[part]["wall_s"] > 0 and large_floor[part]["cpu_s"] > 0
    layers = results["large"]["config"]["num_hidden_layers"]
    assert large_floor["meta"]["layers"] == layers > large_floor["meta"]["stand_in_layers"] >= 1
    assert "--stand-in-layers`, median of 2 runs" in table
    assert "the floor, each part alone" in table and "= the parts'" in table
    # The cost model, last: all-layer all-position probes, then each number of prompts, both
    # modes, alternating, with the same bytes out of either mode.
    cost = results["cost_model"]["rows"]
    assert [(r["case"], r["prompts"], r["probes"]) for r in cost] == [
        ("cost-probes-all", 3, True),
        ("cost-probes-modules", 3, True),
        ("cost-rounding-floor", 3, True),
        ("cost-1", 1, False),
        ("cost-40", 40, False),
    ]
    assert table.index("Scaling (this run)") < table.index("Cost model")
    for row in cost:
        assert len(row["stream"]["walls_s"]) == 1 and row["stream"]["forward"] > 0
        if row["case"] == "cost-rounding-floor":  # streamed only, against the same probes
            assert "memory" not in row
            assert (
                row["over_probes_all_wall"] == row["stream"]["wall_s"] / cost[0]["stream"]["wall_s"]
            )
            assert row["stream"]["rounding_floor"] > 0  # the float64 run's own phase
            continue
        assert row["outputs_identical"] is True, row["case"]
        assert len(row["memory"]["walls_s"]) == 1 and row["memory"]["forward"] > 0
        assert row["stream_over_memory_wall"] == row["stream"]["wall_s"] / row["memory"]["wall_s"]
    assert "| cost-40 | 40 | stream |" in table and "| cost-probes-all | 3 | memory |" in table
    assert "| cost-probes-modules | 3 | memory |" in table
    assert "x cost-probes-all's streamed wall | (streamed only) |" in table


def test_the_cost_model_prompts_are_distinct() -> None:
    from refgen.bench.run import many_prompts

    prompts = many_prompts(1000)
    assert len(set(prompts)) == 1000 and many_prompts(3) == prompts[:3]


def test_the_up_cast_threads_yield_to_the_import(
    bench_tiny: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-cast runs beside the single-threaded import, at a lower priority (nice + 10)."""
    from refgen.load import files as load_files
    from refgen.load import memory as load_memory

    _, snapshot = bench_tiny
    files = [p for p in snapshot.iterdir() if p.name.endswith(".safetensors")]
    seen: set[int] = set()
    read_tensor = load_files.read_tensor

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return read_tensor(*args, **kwargs)

    monkeypatch.setattr(load_files, "read_tensor", spy)
    load_memory.load_state_dict(files, "float32", progress=False)
    assert seen == {min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < min(seen)
