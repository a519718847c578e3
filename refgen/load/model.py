"""What both loading strategies build and refuse: the causal-LM class of a config, the dtype of
each parameter as ``from_pretrained`` applies it, and the check that a checkpoint fits its model
exactly (no parameter left to random initialisation).

The run dtype is not every parameter's dtype. ``from_pretrained(..., dtype=D)`` (transformers
5.24, ``core_model_loading.convert_and_load_state_dict_in_model``) gives each tensor:

1. float32 when its name matches the model's dtype plan (``PreTrainedModel._get_dtype_plan``:
   ``_keep_in_fp32_modules_strict`` for bfloat16 and float16, ``_keep_in_fp32_modules`` for
   float16 only; e.g. MoE routers' ``gate.weight``, ``e_score_correction_bias``, attention
   ``sinks``);
2. else the dtype the model created the parameter in when it differs from D (a module that
   builds its parameter with an explicit ``dtype=torch.float32``, such as ``A_log``);
3. else D.

Each tensor is cast from the checkpoint's bytes to that dtype once. The in-memory strategy hands
transformers tensors it can cast to that dtype exactly as from the file; the streamed one reads
each tensor straight into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refgen.errors import CheckpointError


def causal_lm_class(config: Any) -> Any:
    """The class ``AutoModelForCausalLM`` builds for *config*."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def planned_dtypes(model: Any, dtype: Any) -> dict[str, Any]:
    """The model's parameters and buffers (state dict names) that ``from_pretrained(...,
    dtype=dtype)`` loads in another dtype by the model's dtype plan (rule 1 above): name ->
    torch dtype. Matched with transformers' own pattern builder, as its loader matches them."""
    from transformers.core_model_loading import build_glob_alternation

    plan = model._get_dtype_plan(dtype)
    if not plan:
        return {}
    pattern, by_group, _ = build_glob_alternation(list(plan))
    found = {}
    for name in model.state_dict():
        match = pattern.search(name)
        if match is not None and match.lastgroup is not None:
            found[name] = plan[by_group[match.lastgroup]]
    return found


def float32_parameters(model: Any, dtype: str) -> list[str]:
    """The parameters that stayed float32 in a run in *dtype* (none when *dtype* is float32):
    what the manifest records beside the run dtype."""
    if dtype == "float32":
        return []
    return sorted(n for n, p in model.named_parameters() if str(p.dtype) == "torch.float32")


def check_loading_report(report: Mapping[str, Any]) -> None:
    """CheckpointError naming every parameter transformers would newly initialise, every
    checkpoint tensor it would leave unused and every shape mismatch."""
    kinds = {
        "missing_keys": "model parameters not in the checkpoint (would be randomly initialised)",
        "unexpected_keys": "checkpoint tensors the model does not use",
        "mismatched_keys": "tensors whose shape differs from the model's",
        "error_msgs": "loading errors",
        "conversion_errors": "weight conversion errors",
    }
    problems = []
    for key, what in kinds.items():
        found = report.get(key) or ()
        if found:
            listed = sorted(str(k) for k in (found.items() if isinstance(found, dict) else found))
            shown = ", ".join(listed[:8]) + (
                f" (+{len(listed) - 8} more)" if len(listed) > 8 else ""
            )
            problems.append(f"  {what}: {shown}")
    if problems:
        raise CheckpointError(
            "the checkpoint does not fit its model class exactly, so a "
            "reference from it would not be the checkpoint's model:\n"
            + "\n".join(problems)
            + "\nUse a complete checkpoint whose config.json matches its weights."
        )
