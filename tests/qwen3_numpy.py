"""An independent forward pass of the Llama family in float64 numpy, straight from the
safetensors bytes: Llama (3, and 3.1's ``llama3`` rope scaling), Mistral (sliding window),
Qwen2 (attention biases), Qwen3 (QK-norm; tied or untied, single file or sharded).

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


def read_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder: its index's shards, else model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return read_safetensors(folder / "model.safetensors")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        tensors.update(read_safetensors(folder / shard))
    return tensors


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    out: np.ndarray = weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return out


def _inv_freq(rope: dict[str, Any], dim: int) -> np.ndarray:
    """Rotary frequencies; ``rope_type`` llama3 rescales the low and middle ones (Llama 3.1)."""
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if rope.get("rope_type", "default") == "default":
        return np.asarray(inv_freq)
    if rope["rope_type"] != "llama3":
        raise ValueError(f"rope_type {rope['rope_type']} is not implemented here")
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.asarray(np.where(medium, smoothed, scaled))


def _rope(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotary embedding, half-split layout: x is (tokens, heads, head_dim)."""
    tokens, _, dim = x.shape
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
    """Last-position logits and final-norm residual for one prompt (config: config.json)."""
    eps = config["rms_norm_eps"]
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    rope = config.get("rope_parameters") or {"rope_theta": config["rope_theta"]}
    inv_freq = _inv_freq(rope, head_dim)
    x = weights["model.embed_tokens.weight"][tokens]
    t = len(tokens)
    distance = np.arange(t)[:, None] - np.arange(t)[None, :]  # query - key position
    mask = np.where(distance < 0, -np.inf, 0.0)
    window = config.get("sliding_window")
    if window and (config.get("layer_types") is None or config.get("use_sliding_window")):
        mask = np.where(distance >= window, -np.inf, mask)  # Mistral: the last `window` keys
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def proj(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            bias = weights.get(p + name + ".bias")  # Qwen2: q, k, v biases
            out = h @ weights[p + name + ".weight"].T
            return np.asarray(out if bias is None else out + bias)

        h = _rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = proj(h, "self_attn.q_proj").reshape(t, n_heads, head_dim)
        k = proj(h, "self_attn.k_proj").reshape(t, n_kv, head_dim)
        v = proj(h, "self_attn.v_proj").reshape(t, n_kv, head_dim)
        if p + "self_attn.q_norm.weight" in weights:  # Qwen3's QK-norm, per head
            q = _rms_norm(q, weights[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, weights[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, inv_freq), _rope(k, inv_freq)
        group = n_heads // n_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(t, n_heads * head_dim)
        x = x + proj(attn, "self_attn.o_proj")
        h = _rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = h @ weights[p + "mlp.gate_proj.weight"].T
        up = h @ weights[p + "mlp.up_proj.weight"].T
        x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ weights[p + "mlp.down_proj.weight"].T
    residual = _rms_norm(x, weights["model.norm.weight"], eps)[-1]
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    return head @ residual, residual
