"""Print the planted-bug table of the porters' evidence:
``PYTHONPATH=. python tests/porter_table.py`` (builds the tiny Llama 3.1 reference in float32 and
in bfloat16 in a temporary folder, with its rounding-floor record; about a minute on two cores).

For each reference dtype, the NumPy port of :mod:`llama_port` runs in the same dtype, correct and
with each planted bug, dumps every tensor the reference holds (hidden states, each decoder
layer's raw output, first norm, attention and MLP, the logits at every position) and goes
through ``refgen compare`` at the default tolerance. Columns: the tensor named as the first
divergence (prompt 0, and whether the other prompts name the same), its NMSE, cosine similarity
and error over the reference's own rounding error, the smallest such ratio from the first
divergence on in any prompt, and whether position 0 of the first divergence is within; for the
correct port, the largest NMSE and ratio and the smallest cosine over every tensor and prompt
(what the default tolerance has to admit)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_port

from refgen.compare import port as compare_port


def dump_of(ref: llama_port.Reference, bug: str | None, folder: Path) -> Path:
    return llama_port.write_dump(
        folder / f"{bug or 'correct'}.safetensors", ref.port_tensors(bug), ref.dtype
    )


def row(dtype: str, bug: str | None, result: compare_port.PortComparison) -> str:
    p0, *others = result.prompts
    tensors = [t for p in result.prompts for t in p.tensors if t.metrics is not None]
    if p0.first is None:
        same = "yes" if all(p.first is None for p in others) else "no"
        nmse = max(t.metrics.nmse for t in tensors if t.metrics is not None)
        cosine = min(t.metrics.cosine for t in tensors if t.metrics is not None)
        worst = max(t.ratio for t in tensors)
        cells = [
            "none (all within)",
            same,
            f"max {nmse:.2g}",
            f"min {cosine:.8f}",
            f"max {worst:.2g}x",
            "-",
            "-",
        ]
    else:
        first = p0.first
        assert first.metrics is not None
        same = "yes" if all(p.first and p.first.name == first.name for p in others) else "no"
        # from the first divergence on, in every prompt: how far under it the bug ever falls
        after = [
            t.ratio
            for p in result.prompts
            if p.first is not None
            for t in p.tensors[p.tensors.index(p.first) :]
        ]
        within0 = first.positions_within[0] if first.positions_within else None
        position0 = "-" if within0 is None else "within" if within0 else "beyond"
        if within0 is not None:
            position0 += f" ({first.positions_ratio[0]:.2g}x)"
        cells = [
            first.where,
            same,
            f"{first.metrics.nmse:.2g}",
            f"{first.metrics.cosine:.8f}",
            f"{first.ratio:.2g}x",
            f"{min(after):.2g}x",
            position0,
        ]
    return (
        f"| {dtype} | {bug or 'none (correct port)'} | {result.exit_code} | "
        + " | ".join(cells)
        + " |"
    )


def main() -> None:
    print(
        "| reference and port | planted bug | exit | first divergence (prompt 0) "
        "| same in prompts 1, 2 | NMSE | cosine | error / rounding floor "
        "| smallest ratio from there on | position 0 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="refgen-porter-") as tmp:
        for dtype in ("float32", "bfloat16"):
            ref = llama_port.build_reference(Path(tmp) / dtype, dtype)
            for bug in (None, *llama_port.BUGS):
                result = compare_port.compare_port(ref.json, dump_of(ref, bug, Path(tmp)))
                print(row(dtype, bug, result), flush=True)


if __name__ == "__main__":
    main()
