"""What both loading strategies build and refuse: the causal-LM class of a config, and the check
that a checkpoint fits its model exactly (no parameter left to random initialisation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refgen.errors import CheckpointError


def causal_lm_class(config: Any) -> Any:
    """The class ``AutoModelForCausalLM`` builds for *config*."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


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
