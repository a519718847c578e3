"""Print the planted-bug table of the porters' evidence:
``PYTHONPATH=. python tests/porter_table.py`` (builds the tiny Llama 3.1 reference in float32 and
in bfloat16 in a temporary folder, with its rounding-floor record; about a minute on two cores).

For each reference dtype, the NumPy port of :mod:`llama_port` runs in the same dtype, correct and
with each planted bug, dumps every hidden state at every position and the last-position logits,
and goes through ``refgen compare`` at the default tolerance. Columns: the tensor named as the
first divergence (prompt 0, and whether prompt 1 names the same), its NMSE, cosine similarity
and error over the reference's own rounding error; for the correct port, the largest of these
over every tensor and prompt (what the default tolerance has to admit)."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_port

from refgen.compare import port as compare_port


def dump_of(ref: llama_port.Reference, bug: str | None, folder: Path) -> Path:
    port = ref.port(bug)
    tensors = {}
    for i, tokens in enumerate(ref.tokens):
        for name, value in port.forward(list(tokens)).items():
            if name.startswith("hidden_states.") or name == "logits.last":
                tensors[f"prompt{i}.{name}"] = value
    return llama_port.write_dump(folder / f"{bug or 'correct'}.safetensors", tensors, ref.dtype)


def main() -> None:
    print(
        "| reference and port | planted bug | exit | first divergence (prompt 0) "
        "| same in prompt 1 | NMSE | cosine | error / rounding floor | position 0 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="refgen-porter-") as tmp:
        for dtype in ("float32", "bfloat16"):
            ref = llama_port.build_reference(Path(tmp) / dtype, dtype)
            for bug in (None, *llama_port.BUGS):
                result = compare_port.compare_port(ref.json, dump_of(ref, bug, Path(tmp)))
                p0, p1 = result.prompts
                if p0.first is None:
                    tensors = [t for p in result.prompts for t in p.tensors if t.metrics]
                    worst = max(tensors, key=lambda t: t.ratio)
                    nmse = max(t.metrics.nmse for t in tensors if t.metrics)
                    cosine = min(t.metrics.cosine for t in tensors if t.metrics)
                    named = "none (all within)"
                    same = "yes" if p1.first is None else f"no: {p1.first.name}"
                    ratio, position0 = f"max {worst.ratio:.2g}x", "-"
                    nmse_text, cos_text = f"max {nmse:.2g}", f"min {cosine:.8f}"
                else:
                    first = p0.first
                    assert first.metrics is not None
                    named = first.where
                    same = "yes" if p1.first and p1.first.name == first.name else "no"
                    ratio = f"{first.ratio:.2g}x"
                    within0 = first.positions_within[0] if first.positions_within else None
                    position0 = (
                        "-"
                        if within0 is None
                        else f"{'within' if within0 else 'beyond'} "
                        f"({first.positions_ratio[0]:.2g}x)"
                    )
                    nmse_text = f"{first.metrics.nmse:.2g}"
                    cos_text = f"{first.metrics.cosine:.8f}"
                    if math.isnan(first.ratio):
                        ratio = "NaN"
                print(
                    f"| {dtype} | {bug or 'none (correct port)'} | {result.exit_code} | {named} "
                    f"| {same} | {nmse_text} | {cos_text} | {ratio} | {position0} |"
                )


if __name__ == "__main__":
    main()
