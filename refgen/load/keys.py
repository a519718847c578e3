"""Checkpoint keys to model parameters as ``from_pretrained`` maps them, for the streamed loader.

transformers converts some checkpoints as it loads them (``core_model_loading``, 5.x): keys are
renamed (a multimodal model's ``language_model.model.*`` to ``model.language_model.*``, a legacy
``LayerNorm.gamma``, the base model's prefix added or stripped) and some tensors are converted
(one tensor per expert stacked and concatenated into a model's fused experts, a fused ``qkv``
split). ``save_pretrained`` writes the reverse, so a checkpoint saved by transformers itself
often needs them. The in-memory strategy hands the whole state dict to ``from_pretrained``, which
applies them; the streamed strategy reads each module's tensors itself, so :func:`plan` replays
transformers' own renaming over the checkpoint's keys (``get_model_conversion_mapping`` and
``rename_source_key``, in ``convert_and_load_state_dict_in_model``'s key order and with its
prefix rules), and :meth:`Conversion.run` runs transformers' own ``WeightConverter`` on the
tensors read, each cast first to the dtype transformers casts it to. So a streamed parameter
holds the bytes ``from_pretrained`` gives it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from refgen.errors import StreamingError


@dataclass(frozen=True)
class Conversion:
    """One ``WeightConverter`` applied to some checkpoint tensors: the model tensors it makes."""

    converter: Any  # transformers' WeightConverter, holding no tensors (copied for each run)
    first: str  # the model name transformers converts under (the group's first target)
    sources: tuple[tuple[str, tuple[str, ...]], ...]  # (source pattern, checkpoint keys) in order
    dtype: Any  # every source is cast to it before the operations, as transformers casts them
    targets: Mapping[str, tuple[tuple[int, ...], Any]]  # model name -> (shape, dtype) it makes

    @property
    def name(self) -> str:
        """The operations, as transformers names them (e.g. ``MergeModulelist, Concatenate``)."""
        return ", ".join(type(op).__name__ for op in self.converter.operations)

    @property
    def keys(self) -> list[str]:
        return [key for _, keys in self.sources for key in keys]

    def run(self, read: Callable[[str, Any], Any], model: Any) -> dict[str, Any]:
        """Model name -> tensor, from ``read(checkpoint key, dtype)`` for each source."""
        converter = copy.deepcopy(self.converter)
        for pattern, keys in self.sources:
            for key in keys:
                converter.collected_tensors[pattern].append(read(key, self.dtype))
        out = converter.convert(self.first, model=model, config=model.config)
        return {name: value[0] if isinstance(value, list) else value for name, value in out.items()}


@dataclass(frozen=True)
class KeyPlan:
    """Where each model tensor (state dict name) comes from in the checkpoint."""

    renamed: Mapping[str, str]  # model name -> the checkpoint key read as it is
    converted: Mapping[str, Conversion]  # model name -> the conversion that makes it
    unexpected: tuple[str, ...]  # checkpoint keys that no model name takes


def plan(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> KeyPlan:
    """The key plan of *model* (built, parameters on meta, each in the dtype ``from_pretrained``
    loads it in) for a checkpoint whose tensors have *shapes*.

    Each conversion runs once on meta tensors here, which gives the names and shapes it makes;
    one that cannot run so is refused (StreamingError naming it): the in-memory load applies it.
    """
    import torch
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        dot_natural_key,
        rename_source_key,
    )

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    state = model.state_dict()
    prefix = model.base_model_prefix
    renamed: dict[str, str] = {}
    groups: dict[str, tuple[Any, dict[str, list[str]]]] = {}
    unexpected: list[str] = []
    # The order and the rules of convert_and_load_state_dict_in_model (transformers 5.24): some
    # renamings keep state across keys (GroupWeightRename), and a converter's tensors are
    # collected in this order.
    for key in sorted(shapes, key=dot_natural_key):
        target, pattern = rename_source_key(key, renamings, converters, prefix, state)
        if target not in state and key in state:
            target, pattern = rename_source_key(key, [], [], prefix, state)
        if target not in state:
            unexpected.append(key)
        elif pattern is None:
            renamed.setdefault(target, key)
            if renamed[target] != key:
                unexpected.append(key)  # transformers keeps the first key of a name only
        else:
            template, collected = groups.setdefault(
                target, (copy.deepcopy(by_pattern[pattern]), {})
            )
            collected.setdefault(pattern, []).append(key)
    converted: dict[str, Conversion] = {}
    for first, (template, collected) in groups.items():
        conversion = Conversion(
            template,
            first,
            tuple((p, tuple(keys)) for p, keys in collected.items()),
            state[first].dtype,
            {},
        )
        try:
            made = conversion.run(
                lambda key, dtype: torch.empty(shapes[key], dtype=dtype, device="meta"), model
            )
        except Exception as exc:
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            raise StreamingError(
                f"transformers' checkpoint conversion {conversion.name} for {first} cannot be "
                f"applied while streaming ({type(exc).__name__}: {why}); "
                "load it in memory (--load memory)"
            ) from exc
        targets = {name: (tuple(t.shape), t.dtype) for name, t in made.items()}
        conversion = dataclasses.replace(conversion, targets=targets)
        for name in made:
            if name in state:
                converted[name] = conversion
            else:  # transformers reports it as unexpected too
                unexpected.append(f"{name} (made by {conversion.name})")
    return KeyPlan(renamed, converted, tuple(unexpected))
