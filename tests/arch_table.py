"""Print the architecture x dtype table of the issue's closing note:
``PYTHONPATH=. python tests/arch_table.py`` (builds everything in a temporary folder; a few
minutes on two cores). Columns: the exit code of ``refgen generate``, whether its JSON equals a
plain from_pretrained forward under the determinism profile bit for bit, and the largest
|refgen - float64 NumPy| over top-10 logits and residuals where the NumPy implementation
applies (the Llama family, float32)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import archzoo
from test_architectures import build_zoo


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="refgen-archs-") as tmp:
        zoo = build_zoo(Path(tmp), per_arch=True)
        print(
            "| architecture | dtype | exit | attention | bit-identical to from_pretrained "
            "| max abs diff vs NumPy |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for arch in archzoo.ARCHS:
            for dtype in archzoo.DTYPES:
                code = zoo.exit_codes[arch.name]
                key = f"{arch.name}-{dtype}"
                if code != 0 or not (zoo.out / f"{key}.json").exists():
                    print(f"| {arch.name} | {dtype} | {code} | - | - | - |")
                    continue
                ref = zoo.reference(arch.name, dtype)
                same = "yes" if archzoo.same_as_plain(ref, zoo.plain[key]) else "NO"
                attn = zoo.manifest(arch.name, dtype)["model"]["config"]["attn_implementation"]
                diff = "n/a"
                if arch.numpy and dtype == "float32":
                    diff = f"{archzoo.numpy_max_diff(ref, zoo.built[arch.name].snapshot):.2e}"
                print(f"| {arch.name} | {dtype} | {code} | {attn} | {same} | {diff} |")


if __name__ == "__main__":
    main()
