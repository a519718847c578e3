"""A porter's port of Llama (3.1 rope scaling included) in plain NumPy, in float32 or emulated
bfloat16, with bugs one can plant: what ``refgen compare`` is tested (and measured) against.

It shares no code with torch or transformers (the rotary frequencies come from
:mod:`qwen3_numpy`, the tests' float64 reference implementation), and it returns what a port
would dump: every hidden state at every position under refgen's names, each decoder layer's
attention and MLP outputs, and the logits at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qwen3_numpy import _inv_freq, read_checkpoint

Array = np.ndarray[Any, Any]

BUGS = ("rope_theta", "rope_scaling", "transposed_o_proj", "norm_eps")
"""The planted bugs: rope theta 10000 instead of the config's; the llama3 rope scaling left out;
one middle layer's o_proj weight used transposed; rms_norm_eps 1e-6 instead of the config's."""


def bf16(x: Array) -> Array:
    """Round float32 values to bfloat16 (nearest, ties to even), kept as float32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


@dataclass(frozen=True)
class Port:
    """The port: weights of a checkpoint folder, its config.json, a dtype and at most one bug."""

    weights: dict[str, Array]
    config: dict[str, Any]
    dtype: str = "float32"  # or "bfloat16" (float32 arithmetic, rounded where torch rounds)
    bug: str | None = None

    @classmethod
    def load(cls, folder: Path, config: dict[str, Any], **kw: Any) -> Port:
        weights = {k: v.astype(np.float32) for k, v in read_checkpoint(folder).items()}
        return cls(weights, config, **kw)

    @property
    def middle_layer(self) -> int:
        """The decoder layer (from 0) the transposed-weight bug is planted in."""
        return int(self.config["num_hidden_layers"]) // 2

    def forward(self, tokens: list[int]) -> dict[str, Array]:
        """refgen's tensor names (without ``prompt{i}.``) -> the port's values."""
        c = self.config
        r: Callable[[Array], Array] = bf16 if self.dtype == "bfloat16" else (lambda a: a)
        eps = 1e-6 if self.bug == "norm_eps" else float(c["rms_norm_eps"])
        n_heads, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // n_heads
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        rope.setdefault("rope_theta", c.get("rope_theta", 10000.0))
        if self.bug == "rope_theta":
            rope["rope_theta"] = 10000.0
        if self.bug == "rope_scaling":
            rope["rope_type"] = "default"
        inv_freq = _inv_freq(rope, head_dim).astype(np.float32)
        t = len(tokens)
        angles = np.outer(np.arange(t, dtype=np.float32), inv_freq)
        cos = r(np.cos(np.concatenate([angles, angles], axis=-1)))[:, None, :]
        sin = r(np.sin(np.concatenate([angles, angles], axis=-1)))[:, None, :]
        mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), k=1)
        w = self.weights

        def norm(x: Array, weight: Array) -> Array:
            var = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
            return r(weight * r(x / np.sqrt(var + np.float32(eps))))

        def linear(x: Array, name: str) -> Array:
            return r(x @ w[name].T)

        def rotate(x: Array) -> Array:
            half = x.shape[-1] // 2
            return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)

        out: dict[str, Array] = {}
        x = w["model.embed_tokens.weight"][np.asarray(tokens)]
        out["hidden_states.layer0"] = x
        n_layers = c["num_hidden_layers"]
        for i in range(n_layers):
            p = f"model.layers.{i}."
            h = norm(x, w[p + "input_layernorm.weight"])
            out[f"module.model.layers.{i}.input_layernorm"] = h
            q = linear(h, p + "self_attn.q_proj.weight").reshape(t, n_heads, head_dim)
            k = linear(h, p + "self_attn.k_proj.weight").reshape(t, n_kv, head_dim)
            v = linear(h, p + "self_attn.v_proj.weight").reshape(t, n_kv, head_dim)
            q = r(r(q * cos) + r(rotate(q) * sin))
            k = r(r(k * cos) + r(rotate(k) * sin))
            group = n_heads // n_kv
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(head_dim)) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            attn = r(np.einsum("hqk,khd->qhd", probs, v)).reshape(t, n_heads * head_dim)
            o_proj = w[p + "self_attn.o_proj.weight"]
            if self.bug == "transposed_o_proj" and i == self.middle_layer:
                o_proj = o_proj.T
            attn_out = r(attn @ o_proj.T)
            out[f"module.model.layers.{i}.self_attn"] = attn_out
            x = r(x + attn_out)
            h = norm(x, w[p + "post_attention_layernorm.weight"])
            gate = linear(h, p + "mlp.gate_proj.weight")
            up = linear(h, p + "mlp.up_proj.weight")
            act = r(gate / (np.float32(1) + np.exp(-gate)))
            mlp_out = linear(r(act * up), p + "mlp.down_proj.weight")
            out[f"module.model.layers.{i}.mlp"] = mlp_out
            x = r(x + mlp_out)
            out[f"module.model.layers.{i}"] = x
            if i + 1 < n_layers:
                out[f"hidden_states.layer{i + 1}"] = x
        final = norm(x, w["model.norm.weight"])
        out[f"hidden_states.layer{n_layers}"] = final
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        out["logits.all"] = r(final @ head.T)
        out["logits.last"] = out["logits.all"][-1]
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --- the tiny Llama 3.1 and its reference --------------------------------------------------------

MODULES = (
    "model.layers.*",
    "model.layers.*.input_layernorm",
    "model.layers.*.self_attn",
    "model.layers.*.mlp",
)
"""The module probes of the reference: each decoder layer's raw output, its first norm, its
attention and its MLP (where ports break)."""


@dataclass(frozen=True)
class Reference:
    """A generated reference of refgen's tiny Llama 3.1 (every hidden state and logit at every
    position, the modules above, the input ids, and the rounding-floor record)."""

    json: Path
    snapshot: Path
    config: dict[str, Any]
    tokens: tuple[tuple[int, ...], ...]  # per prompt
    dtype: str

    @property
    def probes(self) -> Path:
        return self.json.with_suffix(".safetensors")

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def port(self, bug: str | None = None, dtype: str | None = None) -> Port:
        return Port.load(self.snapshot, self.config, dtype=dtype or self.dtype, bug=bug)

    def port_tensors(self, bug: str | None = None) -> dict[str, Array]:
        """Every prompt's tensors of the port, under refgen's names (``prompt{i}.``): what the
        reference holds (hidden states, modules, logits at every position)."""
        port = self.port(bug)
        out = {}
        for i, tokens in enumerate(self.tokens):
            for name, value in port.forward(list(tokens)).items():
                if name != "logits.last":
                    out[f"prompt{i}.{name}"] = value
        return out


def build_reference(base: Path, dtype: str = "float32") -> Reference:
    """The checkpoint, its spec (``rounding_floor = true``), lock and ``refgen generate``."""
    import json

    from tiny_llama import generate_reference

    from refgen import tiny

    hf_home = base / "hf-home"
    checkpoint = tiny.build_llama31(hf_home / "hub")

    def write_spec(specs: Path) -> Path:
        return tiny.write_llama31_spec(
            specs, checkpoint.revision, "../out/tiny_llama31.json", dtype, MODULES
        )

    generate_reference(base, hf_home, write_spec)
    out = base / "out" / "tiny_llama31.json"
    doc = json.loads(out.read_bytes())
    tokens = tuple(tuple(int(t) for t in case["tokens"]) for case in doc["test_cases"])
    config = json.loads((checkpoint.snapshot / "config.json").read_text())
    return Reference(out, checkpoint.snapshot, config, tokens, dtype)


def write_dump(
    path: Path, tensors: dict[str, Array], dtype: str = "float32", prefix: str = ""
) -> Path:
    """A port's dump as a port writes one: safetensors, no metadata, floats in *dtype*."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    save_file(
        {
            # each its own memory; integer tensors (ids) as they are
            prefix + k: torch.from_numpy(np.array(v)).to(
                torch_dtype if np.issubdtype(v.dtype, np.floating) else torch.int64
            )
            for k, v in tensors.items()
        },
        str(path),
    )
    return path
