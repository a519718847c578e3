"""The floor of a run: each part of the work a reference needs, measured alone (a benchmark child).

``python -m refgen.bench.floor SNAPSHOT OUTPUT_JSON [--stand-in-layers K] [PROMPT ...]`` runs,
under the determinism profile, one after the other in one process, each with its wall time and the
process's CPU time (``getrusage``, every thread):

- ``import``: torch, transformers, the tokenizer and the model's class (every run imports them);
- ``hash``: every weight file by BLAKE3 (the lock's digest for weights), on one thread, as the
  verifier hashes it;
- ``read``: every tensor read from the mapped file and up-cast to float32 on the loader's
  threads, into the tensors of the layer before when the shapes match, as the streamed load
  reads (:func:`refgen.load.files.read_tensor`);
- ``forward``: the prompts' forwards with every weight already in memory, on a thread of their
  own as ``refgen generate`` runs them, under the profile (hidden states, no cache). With
  ``--stand-in-layers K`` (a model whose F32 weights exceed memory: the 8B shape) only the first
  K decoder layers are read, and every layer runs with the weights of one of them (layer i with
  layer i mod K's): the same arithmetic at the full depth, each layer's weights again read from
  memory (far bigger than the caches), in the memory of K layers.

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
    stand_in = 0
    if prompts[:1] == ["--stand-in-layers"]:
        stand_in, prompts = int(prompts[1]), prompts[2:]
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

    config = AutoConfig.from_pretrained(folder)
    depth = config.num_hidden_layers
    if stand_in:
        model = _stand_in_model(config, weights, min(stand_in, depth))
    else:
        state = memory.load_state_dict(weights, "float32", progress=False)
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
        "layers": float(depth),
        "stand_in_layers": float(min(stand_in, depth)),
    }
    Path(output).write_text(json.dumps(parts, indent=2))


def _stand_in_model(config: Any, weights: list[Path], kept: int) -> Any:
    """The model with the checkpoint's first *kept* decoder layers (and everything outside the
    layers) read in F32, its layer list the full depth, layer i being layer i mod *kept*."""
    import torch

    from refgen.load import files
    from refgen.load import model as model_check
    from refgen.load.stream import decoder_layers

    state = {}
    for path in weights:
        with files.mapped(path, writable=True) as data:
            for entry in files.read_header(path):
                layer = re.search(r"\.layers\.(\d+)\.", entry.name)
                if layer is None or int(layer.group(1)) < kept:
                    state[entry.name] = files.read_tensor(data, entry, torch.float32, path)
    depth = config.num_hidden_layers
    config.num_hidden_layers = kept
    model = model_check.causal_lm_class(config).from_pretrained(
        None, config=config, state_dict=state, dtype=torch.float32
    )
    name, layers = decoder_layers(model)
    parent, _, attribute = name.rpartition(".")
    every = torch.nn.ModuleList([layers[i % kept] for i in range(depth)])
    setattr(model.get_submodule(parent), attribute, every)
    model.config.num_hidden_layers = depth
    return model


if __name__ == "__main__":
    main(sys.argv[1:])
    from refgen.cli import exit_now

    exit_now(0)
