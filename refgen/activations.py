"""The memory one forward needs beyond the weights, estimated before it runs.

A prompt's forward holds, at its peak (float sizes in the run dtype, ``L`` positions):

* every hidden state, kept for the reference and the probes: ``(layers + 1) x L x hidden``;
* the logits of every position: ``L x vocab``, in float32 at least;
* one layer's transients: queries, keys, values and output (``4 x L x hidden``, at most) and the
  MLP's ``3 x L x intermediate``;
* with eager attention, the attention matrix: ``heads x L^2``, twice (the scores and their
  softmax; three times the run dtype's size more for a half dtype, whose softmax runs in
  float32), plus the causal mask (``L^2``). SDPA on CPU runs causal attention in blocks: no
  ``L^2`` term. Eager attention is what makes a long prompt impossible: 32,000 positions of
  4 heads in float32 are 16.4 GB per copy of the matrix.

The estimate leaves out what does not grow with the prompt (the interpreter and libraries:
refgen.load.plan.RUNTIME_BYTES), so it is a lower bound of the real peak: a prompt it refuses
cannot run within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ITEMSIZES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ForwardMemory:
    """Bytes one forward of *length* positions holds at its peak, by part."""

    length: int
    hidden_states: int
    logits: int
    layer: int
    attention: int  # the eager attention matrices and mask; 0 for blocked attention

    @property
    def total(self) -> int:
        return self.hidden_states + self.logits + self.layer + self.attention

    def describe(self) -> str:
        parts = [
            f"attention matrices {self.attention / 1e9:.2f} GB",
            f"hidden states {self.hidden_states / 1e9:.2f} GB",
            f"logits {self.logits / 1e9:.2f} GB",
            f"one layer's activations {self.layer / 1e9:.2f} GB",
        ]
        return ", ".join(parts[0 if self.attention else 1 :])


def forward_memory(config: Any, length: int, dtype: str, attention: str) -> ForwardMemory:
    """The estimate (module doc) for a model of this resolved *config*, run in *dtype* with the
    attention implementation *attention* (``config._attn_implementation``)."""
    from refgen import modelinfo

    size = ITEMSIZES[dtype]
    # the text tower's facts, each optional (refgen.modelinfo): a part the config does not give
    # counts as 0 (a Mamba has no attention heads, so no attention matrix), still a lower bound
    facts = modelinfo.facts(config)
    hidden = int(facts.get("hidden_size", 0))
    layers = int(facts.get("num_layers", 0))
    heads = int(facts.get("num_attention_heads", 0))
    vocab = int(facts.get("vocab_size", 0))
    given = modelinfo.attribute(modelinfo.text_config(config), "intermediate_size")
    intermediate = given if isinstance(given, int) and given > 0 else 4 * hidden
    matrix = heads * length * length
    if attention == "sdpa":
        eager = 0
    else:  # eager, and any implementation not known to be blocked
        softmax = 4 if size < 4 else 0  # a half dtype's softmax runs in float32
        eager = matrix * (2 * size + softmax) + length * length * size
    return ForwardMemory(
        length=length,
        hidden_states=(layers + 1) * length * hidden * size,
        logits=length * vocab * max(size, 4),
        layer=length * (4 * hidden + 3 * intermediate) * size,
        attention=eager,
    )
