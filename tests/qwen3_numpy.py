"""An independent Qwen3 forward pass in float64 numpy, straight from the safetensors bytes.

It shares no code with torch or transformers, so agreement with the generator is evidence that
the generator computes the model (not just that it repeats itself).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        chunk = data[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32)
        elif info["dtype"] == "F32":
            values = np.frombuffer(chunk, dtype="<f4")
        else:
            raise ValueError(f"unsupported dtype {info['dtype']}")
        tensors[name] = values.astype(np.float64).reshape(info["shape"])
    return tensors


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    out: np.ndarray = weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return out


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding, half-split layout: x is (tokens, heads, head_dim)."""
    tokens, _, dim = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.outer(np.arange(tokens, dtype=np.float64), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out: np.ndarray = x * cos + rotated * sin
    return out


def forward(
    weights: dict[str, np.ndarray], config: dict[str, Any], tokens: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Last-position logits and final-norm residual for one prompt."""
    eps = config["rms_norm_eps"]
    n_heads, n_kv, head_dim = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
    x = weights["model.embed_tokens.weight"][tokens]
    t = len(tokens)
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = (h @ weights[p + "self_attn.q_proj.weight"].T).reshape(t, n_heads, head_dim)
        k = (h @ weights[p + "self_attn.k_proj.weight"].T).reshape(t, n_kv, head_dim)
        v = (h @ weights[p + "self_attn.v_proj.weight"].T).reshape(t, n_kv, head_dim)
        q = _rope(_rms_norm(q, weights[p + "self_attn.q_norm.weight"], eps), theta)
        k = _rope(_rms_norm(k, weights[p + "self_attn.k_norm.weight"], eps), theta)
        group = n_heads // n_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(t, n_heads * head_dim)
        x = x + attn @ weights[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = h @ weights[p + "mlp.gate_proj.weight"].T
        up = h @ weights[p + "mlp.up_proj.weight"].T
        x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ weights[p + "mlp.down_proj.weight"].T
    residual = _rms_norm(x, weights["model.norm.weight"], eps)[-1]
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    return head @ residual, residual
