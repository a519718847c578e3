"""What the model is, derived generically from its resolved config and built modules.

Two views, both computed before the first forward (a model whose description cannot be derived
is refused before any compute, not after every prompt ran):

* :func:`contract_fields`: the keys the Qwen3 consumer contract names (``hidden_size``,
  ``head_dim``, ``rope_theta``, ``rms_norm_eps``, ``use_qk_norm``, ...), in the JSON's key order,
  each left out where it does not apply (GPT-2 has no rope and no RMSNorm; Gemma3's rope is per
  layer type). For a Qwen3 model these are exactly the keys and types of the published file.
* :func:`describe`: for the manifest, a SHA-256 of the config as transformers resolved it
  (canonical JSON), the class, the attention implementation used, and the resolved fields under
  their own names (norm epsilon, rope parameters nested or scaled, soft-capping, embedding scale,
  multipliers, sliding window).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

# Config attributes recorded under their own name when the model has them (not None).
NORM_EPS_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps", "norm_epsilon")
OPTIONAL_KEYS = (
    *NORM_EPS_KEYS,
    "intermediate_size",
    "hidden_act",
    "activation_function",
    "partial_rotary_factor",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "scale_attn_weights",
    "sliding_window",
    "layer_types",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
)


def config_sha256(config: Any) -> str:
    """SHA-256 of ``config.to_dict()`` as canonical JSON (sorted keys, no whitespace), without
    the private keys transformers adds at run time (``_name_or_path`` is a host path)."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def head_dim(config: Any) -> int:
    value = getattr(config, "head_dim", None)
    return int(value) if value else int(config.hidden_size) // int(config.num_attention_heads)


def num_kv_heads(config: Any) -> int:
    value = getattr(config, "num_key_value_heads", None)
    return int(value) if value else int(config.num_attention_heads)


def rope_parameters(config: Any) -> dict[str, Any] | None:
    """The rope parameters as transformers resolved them: flat ({rope_type, rope_theta, ...},
    llama3/yarn scaling included) or nested per layer type (Gemma3); None without rope."""
    params = getattr(config, "rope_parameters", None)
    if params:
        resolved: dict[str, Any] = _plain(dict(params))
        return resolved
    theta = getattr(config, "rope_theta", None)  # transformers < 5
    return {"rope_type": "default", "rope_theta": float(theta)} if theta is not None else None


def rope_theta(config: Any) -> float | None:
    """The one rope base, when there is one (not for nested per-layer-type rope, nor none)."""
    params = rope_parameters(config) or {}
    theta = params.get("rope_theta")
    return float(theta) if isinstance(theta, int | float) else None


def uses_qk_norm(model: Any) -> bool:
    """Whether attention normalises queries and keys (Qwen3, Gemma3, OLMo2), by module name."""
    return any(
        name.rsplit(".", 1)[-1] in ("q_norm", "q_layernorm", "query_layernorm")
        for name, _ in model.named_modules()
    )


def contract_fields(config: Any, model: Any) -> dict[str, Any]:
    """The consumer contract's model keys (see module doc), in the published file's order."""
    fields: dict[str, Any] = {
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "num_attention_heads": int(config.num_attention_heads),
        "num_kv_heads": num_kv_heads(config),
        "head_dim": head_dim(config),
        "vocab_size": int(config.vocab_size),
    }
    if getattr(config, "max_position_embeddings", None) is not None:
        fields["max_position_embeddings"] = int(config.max_position_embeddings)
    theta = rope_theta(config)
    if theta is not None:
        fields["rope_theta"] = theta
    if getattr(config, "rms_norm_eps", None) is not None:
        fields["rms_norm_eps"] = float(config.rms_norm_eps)
    fields["use_qk_norm"] = uses_qk_norm(model)
    return fields


def describe(config: Any, model: Any, config_digest: str) -> dict[str, Any]:
    """The manifest's record of the model (``config_digest`` from :func:`config_sha256`, taken
    before from_pretrained set the run's dtype and attention on the config)."""
    resolved = contract_fields(config, model)
    for key in OPTIONAL_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            resolved[key] = _plain(value)
    rope = rope_parameters(config)
    if rope is not None:
        resolved["rope_parameters"] = rope
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    if scale is not None:  # Gemma multiplies the embeddings by sqrt(hidden_size)
        resolved["embed_scale"] = float(scale)
    return {
        "class": type(model).__name__,
        "model_type": str(config.model_type),
        "config_sha256": config_digest,
        "attn_implementation": str(config._attn_implementation),
        "resolved": resolved,
    }


def _plain(value: Any) -> Any:
    """JSON-ready: nested dicts and lists of numbers, strings, bools; finite floats."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)
