"""What the model is, read from its text tower's config, and the checks of ``config.json`` that
come before any weight is used.

* :func:`read_checkpoint` (before the load): ``config.json`` is valid JSON, its ``model_type`` is
  one that transformers' ``AutoModelForCausalLM`` builds natively (not an unknown type, not an
  encoder-decoder, not remote code), transformers accepts the config, and its vocabulary matches
  the weights' embedding (read from the safetensors headers). A checkpoint that fails is refused
  (exit 2) with a message naming the type and why.
* :func:`facts`: the keys the Qwen3 consumer contract names (``hidden_size``, ``head_dim``,
  ``rope_theta``, ...), in the JSON's key order, from the text tower's config
  (``config.get_text_config()``: the language model of a multimodal checkpoint). Each is
  optional and left out when the architecture has no such thing (a Mamba has no attention heads,
  GPT-2 no rope; ``max_position_embeddings = -1`` means no limit), never guessed. For a Qwen3
  model these are exactly the keys and types of the published file.
* :func:`describe`: for the manifest, a SHA-256 of the config as transformers resolved it
  (canonical JSON), the class, the attention implementation used, and the resolved fields under
  their own names (norm epsilon, rope parameters nested or scaled, soft-capping, embedding scale,
  multipliers, sliding window).
* :func:`last_position`: the last position of a hidden state in the model's own layout (several
  streams for Gemma 3n's AltUp), and :func:`layout` to record what was taken.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refgen import jsonio
from refgen.errors import CheckpointError

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
# A config.json bigger than this is not a config (the largest in transformers' own tests are a few
# hundred KB: per-layer settings of 100+ layers).
MAX_CONFIG_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's config as transformers resolves it, checked before any weight is used."""

    config: Any
    model_type: str
    model_class: str  # the class AutoModelForCausalLM builds for it
    config_sha256: str
    facts: dict[str, Any]  # :func:`facts`


def read_checkpoint(
    folder: Path,
    weight_files: Sequence[Path] = (),
    confirm: Callable[[Path], None] | None = None,
) -> Checkpoint:
    """Check ``folder/config.json`` (already verified against the lock) before any load; see the
    module doc. CheckpointError (exit 2) names the model type and why it cannot be a reference;
    *confirm* (a weight file) checks a file against the lock before a refusal blames it."""
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    version = f"transformers {transformers.__version__}"
    path = folder / "config.json"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"config.json is {size} bytes, not a model config.")
        data = jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(
            "the checkpoint has no config.json, so no causal LM can be built from it. Add the "
            "config.json the weights were saved with and re-lock."
        ) from None
    except ValueError as exc:
        raise CheckpointError(
            f"config.json is not valid JSON ({exc}). Restore the file the weights were saved "
            "with and re-lock."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"config.json is a JSON {type(data).__name__}, not an object.")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError(
            "config.json has no model_type, so transformers cannot tell which architecture it is. "
            "Add the model_type of the architecture the weights were made for."
        )
    if model_type not in CONFIG_MAPPING:
        if "auto_map" in data:
            raise CheckpointError(
                f"model_type {model_type!r} is not one {version} ships: config.json's auto_map "
                "points to remote code, which refgen never runs. Use a model transformers "
                "implements natively."
            )
        raise CheckpointError(
            f"model_type {model_type!r} is unknown to {version}. Check config.json, or use a "
            "transformers version that implements it."
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        seq2seq = MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        if data.get("is_encoder_decoder") or model_type in seq2seq:
            why = "an encoder-decoder model"
        else:
            why = "not a causal language model"
        raise CheckpointError(
            f"model_type {model_type!r} is {why}: {version}'s AutoModelForCausalLM has no class "
            "for it (from_pretrained refuses it too). refgen makes references of causal LMs."
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers validates configs with many exception types
        raise CheckpointError(
            f"{version} rejects config.json ({model_type}): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from None
    model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        raise CheckpointError(
            f"config.json ({model_type}) resolves to {type(config).__name__}, for which "
            f"{version}'s AutoModelForCausalLM has no class (from_pretrained refuses this "
            "folder too). Save the checkpoint with the config of its causal-LM class."
        )
    _check_vocabulary(model_type, config, model_class, weight_files, confirm)
    return Checkpoint(
        config, model_type, model_class.__name__, config_sha256(config), facts(config)
    )


def _check_vocabulary(
    model_type: str,
    config: Any,
    model_class: Any,
    weight_files: Sequence[Path],
    confirm: Callable[[Path], None] | None,
) -> None:
    """The rows of the token embedding the model builds from *config* against the weights', from
    the safetensors headers (no tensor is read). The weights' candidates are the 2-D tensors of
    a module named as transformers names token embeddings (``embed_tokens``, ``wte``,
    ``word_embeddings``, ``embed_in``, ``tok_embeddings``); the check fails only when there are
    some and none has the model's rows (a multimodal checkpoint holds other towers' embeddings
    too). The model's rows are ``vocab_size``, or, when no candidate has that many, those of the
    model built on the meta device (no memory, no compute): Moshi's embedding has one more row
    than its vocabulary. No candidate: transformers' loading report still refuses a mismatch.
    *confirm* checks a file against the lock before a mismatch is blamed on the config."""
    from safetensors import safe_open

    candidates: list[tuple[Path, str, int]] = []
    for file in weight_files:
        try:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    module, _, leaf = name.rpartition(".")
                    if leaf != "weight" or module.rpartition(".")[2] not in _EMBEDDING_NAMES:
                        continue
                    shape = handle.get_slice(name).get_shape()
                    if len(shape) == 2:
                        candidates.append((file, name, int(shape[0])))
        except (OSError, ValueError):  # unreadable header: the loader names it with its hash
            continue
    rows = {count for _, _, count in candidates}
    vocab = _positive_int(text_config(config), "vocab_size")
    if not candidates or vocab in rows:
        return
    expected = _embedding_rows(config, model_class)
    if expected is None or expected in rows:
        return
    file, name, count = candidates[0]
    if confirm is not None:
        confirm(file)  # a tampered file is an integrity error (exit 3), not a wrong config
    raise CheckpointError(
        f"config.json ({model_type}) says vocab_size {vocab}, so the model's token embedding has "
        f"{expected} rows, but the weights' {name} has {count}. The config does not belong to "
        "these weights: restore the config.json they were saved with and re-lock."
    )


def _embedding_rows(config: Any, model_class: Any) -> int | None:
    """Rows of the input embedding of the model *config* builds, on the meta device."""
    import torch

    try:
        with torch.device("meta"):
            model = model_class._from_config(config)
        weight = getattr(model.get_input_embeddings(), "weight", None)
    except Exception:  # a model that cannot be built this way: the loader decides
        return None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


_EMBEDDING_NAMES = frozenset(
    ("embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings")
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def config_sha256(config: Any) -> str:
    """SHA-256 of ``config.to_dict()`` as canonical JSON (sorted keys, no whitespace), without
    the private keys transformers adds at run time (``_name_or_path`` is a host path)."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def text_config(config: Any) -> Any:
    """The language model's config: ``get_text_config()`` (a multimodal model's text tower), or
    the config itself where that is ambiguous or missing."""
    try:
        return config.get_text_config()
    except (AttributeError, ValueError):
        return config


def attribute(config: Any, name: str) -> Any:
    """``config.name``, or None when the config has no single value for it (absent, or a
    per-layer attribute that varies across layers, which transformers refuses to read globally)."""
    try:
        return getattr(config, name, None)
    except (AttributeError, RuntimeError):
        return None


def _positive_int(config: Any, name: str) -> int | None:
    value = attribute(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None  # absent, or a sentinel such as -1 (no limit)
    return value


def head_dim(config: Any) -> int | None:
    value = _positive_int(config, "head_dim")
    if value is not None:
        return value
    hidden = _positive_int(config, "hidden_size")
    heads = _positive_int(config, "num_attention_heads")
    if hidden is None or heads is None or hidden % heads:
        return None
    return hidden // heads


def num_kv_heads(config: Any) -> int | None:
    """Key/value heads; a model with attention heads and no grouping has as many as heads."""
    value = _positive_int(config, "num_key_value_heads")
    return value if value is not None else _positive_int(config, "num_attention_heads")


def rope_parameters(config: Any) -> dict[str, Any] | None:
    """The rope parameters as transformers resolved them: flat ({rope_type, rope_theta, ...},
    llama3/yarn scaling included) or nested per layer type (Gemma3); None without rope."""
    params = attribute(config, "rope_parameters")
    if params and isinstance(params, dict):
        resolved: dict[str, Any] = _plain(dict(params))
        return resolved
    theta = attribute(config, "rope_theta")  # transformers < 5
    return {"rope_type": "default", "rope_theta": float(theta)} if theta is not None else None


def rope_theta(config: Any) -> float | None:
    """The one rope base, when there is one (not for nested per-layer-type rope, nor none)."""
    params = rope_parameters(config) or {}
    theta = params.get("rope_theta")
    return float(theta) if isinstance(theta, int | float) and not isinstance(theta, bool) else None


def uses_qk_norm(model: Any) -> bool:
    """Whether attention normalises queries and keys (Qwen3, Gemma3, OLMo2), by module name."""
    return any(
        name.rsplit(".", 1)[-1] in ("q_norm", "q_layernorm", "query_layernorm")
        for name, _ in model.named_modules()
    )


def facts(config: Any) -> dict[str, Any]:
    """The consumer contract's model keys that the config gives (see the module doc), in the
    published file's order, from the text tower's config; ``use_qk_norm`` needs the built model
    (:func:`contract_fields`)."""
    text = text_config(config)
    eps = attribute(text, "rms_norm_eps")
    found: dict[str, Any] = {
        "hidden_size": _positive_int(text, "hidden_size"),
        "num_layers": _positive_int(text, "num_hidden_layers"),
        "num_attention_heads": _positive_int(text, "num_attention_heads"),
        "num_kv_heads": num_kv_heads(text),
        "head_dim": head_dim(text),
        "vocab_size": _positive_int(text, "vocab_size"),
        "max_position_embeddings": _positive_int(text, "max_position_embeddings"),
        "rope_theta": rope_theta(text),
        "rms_norm_eps": float(eps) if isinstance(eps, int | float) else None,
    }
    return {key: value for key, value in found.items() if value is not None}


def contract_fields(config: Any, model: Any) -> dict[str, Any]:
    """:func:`facts` and ``use_qk_norm``, in the published file's order."""
    return facts(config) | {"use_qk_norm": uses_qk_norm(model)}


def describe(config: Any, model: Any, config_digest: str) -> dict[str, Any]:
    """The manifest's record of the model (``config_digest`` from :func:`config_sha256`, taken
    before from_pretrained set the run's dtype and attention on the config)."""
    text = text_config(config)
    resolved = contract_fields(config, model)
    for key in OPTIONAL_KEYS:
        value = attribute(text, key)
        if value is not None:
            resolved[key] = _plain(value)
    rope = rope_parameters(text)
    if rope is not None:
        resolved["rope_parameters"] = rope
    per_layer = text.to_dict().get("per_layer_config")
    if per_layer:  # settings that differ by layer (transformers' heterogeneous configs)
        resolved["per_layer_config"] = _plain(per_layer)
    # Gemma multiplies the embeddings by sqrt(hidden_size): a number or a 0-d tensor
    scale = getattr(_input_embeddings(model), "embed_scale", None)
    if scale is not None and getattr(scale, "numel", lambda: 1)() == 1:
        resolved["embed_scale"] = float(scale)
    record = {
        "class": type(model).__name__,
        "model_type": str(config.model_type),
        "config_sha256": config_digest,
        "attn_implementation": str(config._attn_implementation),
        "resolved": resolved,
    }
    if text is not config:  # the facts above come from this sub-config
        record["text_config"] = {"class": type(text).__name__, "model_type": str(text.model_type)}
    return record


def _input_embeddings(model: Any) -> Any:
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def last_position(hidden: Any) -> Any:
    """The last position of one prompt's hidden state, in the model's own layout: dims
    ``[*streams, batch, positions, hidden]`` (no streams for most models; Gemma 3n's AltUp has
    4), batch 0 -> ``[*streams, hidden]``."""
    return hidden[..., 0, -1, :]


def positions(hidden: Any, rows: slice) -> Any:
    """Rows *rows* of one prompt's hidden state: ``[*streams, positions, hidden]``."""
    return hidden[..., 0, rows, :]


def layout(hidden: Any) -> dict[str, Any]:
    """What :func:`last_position` takes from a hidden state of this shape, for the manifest."""
    streams = list(hidden.shape[:-3])
    dims = [*(["stream"] if streams else []), "batch", "position", "hidden"]
    return {
        "hidden_states_dims": dims,
        "streams": streams[0] if len(streams) == 1 else (streams or None),
        "last_residual": "hidden_states[-1][..., 0, -1, :]",
        "last_residual_shape": [*streams, int(hidden.shape[-1])],
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
