"""The original script's method, as the benchmark's baseline (run as a child process).

With ``REFGEN_BENCH_OFFLOAD_FOLDER`` and ``REFGEN_BENCH_OFFLOAD_CPU`` set, the same with
accelerate's disk offload (``device_map="auto"``, ``max_memory={"cpu": ...}``, an offload folder):
what a user would try for a model bigger than memory.

``python -m refgen.bench.baseline SNAPSHOT OUTPUT [PROMPT ...]``: ``from_pretrained`` in F32,
the tokenizer, one forward per prompt with hidden states, top-10 logits and the last residual,
``json.dump(indent=2)``. No hashing, no determinism profile beyond what the caller's environment
sets: this is what the generator is measured against.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

PROMPTS = ["The capital of France is", "Two plus two equals", "Once upon a time, there was a"]


def main(argv: list[str]) -> None:
    start = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    snapshot, output, *prompts = argv
    marks = {"import": time.perf_counter() - start}
    tokenizer = AutoTokenizer.from_pretrained(snapshot)
    offload = os.environ.get("REFGEN_BENCH_OFFLOAD_FOLDER")
    if offload:  # accelerate's disk offload: what fits in the CPU budget, the rest on disk
        model = AutoModelForCausalLM.from_pretrained(
            snapshot,
            dtype=torch.float32,
            device_map="auto",
            max_memory={"cpu": os.environ["REFGEN_BENCH_OFFLOAD_CPU"]},
            offload_folder=offload,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32)
    model.eval()
    config = model.config
    marks["load"] = time.perf_counter() - start - sum(marks.values())
    cases = []
    for prompt in prompts or PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        logits = out.logits[0, -1, :]
        top = torch.topk(logits, 10)
        cases.append(
            {
                "prompt": prompt,
                "tokens": inputs["input_ids"][0].tolist(),
                "top_10": [
                    {"index": int(i), "logit": float(v)}
                    for v, i in zip(top.values, top.indices, strict=True)
                ],
                "last_residual_f32": out.hidden_states[-1][0, -1, :].tolist(),
            }
        )
    marks["forward"] = time.perf_counter() - start - sum(marks.values())
    result = {
        "model_repo": snapshot,
        "methodology": "transformers forward pass, F32, CPU",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "platform": platform.platform(),
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_kv_heads": getattr(config, "num_key_value_heads", None),
        "head_dim": getattr(config, "head_dim", None),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": getattr(config, "rope_theta", None),
        "rms_norm_eps": config.rms_norm_eps,
        "use_qk_norm": True,
        "test_cases": cases,
    }
    with open(output, "w") as f:
        json.dump(result, f, indent=2)
    marks["write"] = time.perf_counter() - start - sum(marks.values())
    if os.environ.get("REFGEN_BENCH_TIMINGS"):  # the benchmark's phase split; not in the output
        with open(os.environ["REFGEN_BENCH_TIMINGS"], "w") as f:
            json.dump(marks, f)


if __name__ == "__main__":
    main(sys.argv[1:])
