"""The floor of a run: each part of the work a reference needs, measured alone (a benchmark child).

``python -m refgen.bench.floor SNAPSHOT OUTPUT_JSON [PROMPT ...]`` runs, under the determinism
profile, one after the other in one process, each with its wall time and the process's CPU time
(``getrusage``, every thread):

- ``import``: torch, transformers, the tokenizer and the model's class (every run imports them);
- ``hash``: every weight file by BLAKE3 (the lock's digest for weights), on one thread, as the
  verifier hashes it;
- ``read``: every tensor read from the mapped file and up-cast to float32 on the loader's
  threads, into the tensors of the layer before when the shapes match, as the streamed load
  reads (:func:`refgen.load.files.read_tensor`);
- ``forward``: the prompts' forwards with every weight already in memory, on a thread of their
  own as ``refgen generate`` runs them, under the profile (hidden states, no cache).

What a run cannot do without is these parts; how they can overlap on the machine's cores is the
benchmark table's business (``refgen.bench.run.floor``).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from refgen.bench.baseline import PROMPTS


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(parts: dict[str, dict[str, float]], name: str, work: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), _cpu()
    result = work()
    parts[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu}
    return result


def main(argv: list[str]) -> None:
    from refgen import determinism

    determinism.apply_environment()
    snapshot, output, *prompts = argv
    folder = Path(snapshot)
    weights = sorted(folder.glob("*.safetensors"))
    parts: dict[str, dict[str, float]] = {}

    def imports() -> None:
        import torch
        import transformers  # noqa: F401
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401

        from refgen.load import model as model_check

        determinism.configure_torch()
        model_check.causal_lm_class(AutoConfig.from_pretrained(folder))
        torch.empty(1)

    _timed(parts, "import", imports)

    from refgen import hashing
    from refgen.load import files, memory

    def hash_all() -> None:
        for path in weights:
            digest = hashing.hasher("blake3")
            with files.mapped(path) as data:
                for offset in range(0, len(data), 8 << 20):
                    with memoryview(data)[offset : offset + (8 << 20)] as block:
                        digest.update(block)
                        files.drop_pages(data, offset, len(block))

    _timed(parts, "hash", hash_all)

    def read_all() -> None:
        import torch

        # Layer by layer, each read into the tensors the layer before released (as streamed).
        free: dict[tuple[int, ...], list[Any]] = {}

        def read(data: Any, path: Path, job: tuple[files.TensorEntry, Any]) -> Any:
            entry, out = job
            return files.read_tensor(data, entry, torch.float32, path, out=out)

        for path in weights:
            groups: dict[str, list[files.TensorEntry]] = {}
            for entry in files.read_header(path):
                layer = re.match(r"(.*\.layers\.\d+)\.", entry.name)
                groups.setdefault(layer.group(1) if layer else entry.name, []).append(entry)
            with (
                files.mapped(path, writable=True) as data,
                ThreadPoolExecutor(files.WORKERS) as pool,
            ):
                for entries in groups.values():
                    jobs = [(e, (free.get(e.shape) or [None]).pop()) for e in entries]
                    tensors = list(pool.map(partial(read, data, path), jobs))
                    for entry, tensor in zip(entries, tensors, strict=True):
                        free.setdefault(entry.shape, []).append(tensor)

    _timed(parts, "read", read_all)

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from refgen.load import model as model_check

    state = memory.load_state_dict(weights, "float32", progress=False)
    config = AutoConfig.from_pretrained(folder)
    model = model_check.causal_lm_class(config).from_pretrained(
        None, config=config, state_dict=state, dtype=torch.float32
    )
    del state
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = [tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts or PROMPTS]

    def forwards() -> None:
        def work() -> None:
            torch.set_num_threads(determinism.THREADS)
            with torch.inference_mode():
                for input_ids in inputs:
                    model(input_ids=input_ids, output_hidden_states=True, use_cache=False)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()

    _timed(parts, "forward", forwards)
    parts["meta"] = {
        "weights_bytes": float(sum(p.stat().st_size for p in weights)),
        "prompts": float(len(inputs)),
    }
    Path(output).write_text(json.dumps(parts, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
    from refgen.cli import exit_now

    exit_now(0)
