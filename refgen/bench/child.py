"""``refgen generate`` for one spec with its phase timings written out (a benchmark child).

``python -m refgen.bench.child SPEC OUTPUT_DIR TIMINGS_JSON [--no-verify] [--stream [BUDGET] |
--memory]`` does what ``python -m refgen generate --spec SPEC --output-dir OUTPUT_DIR --force``
(with ``--stream --memory-budget BUDGET``, or ``--load memory``) does and also writes the
generator's own phase timings.
``--no-verify`` trusts the lock without hashing, only to measure what verification costs; it
never runs outside the benchmark.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()


def _skip_verification() -> None:
    """Make the generator's hash check (refgen.load.verify.Verifier) a no-op. Called before
    refgen.generate is imported, so that the generator binds the trusting class."""
    from refgen.load import verify

    class Trusting(verify.Verifier):
        def _run(self) -> None:
            self.actual = {
                name: {a: getattr(f, a) for a in f.verified_with}
                for name, f in self.expected.items()
            }
            self.sizes = {name: (self.folder / name).stat().st_size for name in self.expected}

    verify.Verifier = Trusting  # type: ignore[misc]


def main(argv: list[str]) -> None:
    from refgen import determinism

    determinism.apply_environment()
    spec_path, output_dir, timings_path, *flags = argv
    if "--no-verify" in flags:
        _skip_verification()
    from refgen import generate
    from refgen.load.plan import LoadOptions
    from refgen.spec import load_spec, parse_size

    load = None
    if "--stream" in flags:  # --stream [BUDGET]: layer-streamed, within BUDGET if given
        budget = flags[flags.index("--stream") + 1 :]
        load = LoadOptions("stream", parse_size(budget[0]) if budget else None)
    elif "--memory" in flags:
        load = LoadOptions("memory")
    timings = generate.Timings()
    generate.KEEP_LAST_MODEL = True  # as `python -m refgen` (refgen.__main__)
    generate.generate(load_spec(spec_path), Path(output_dir), timings, load=load)
    phases = dict(timings.phases)
    phases["total_in_process"] = time.perf_counter() - START
    Path(timings_path).write_text(json.dumps(phases, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
    from refgen.cli import exit_now

    exit_now(0)  # no teardown, as `python -m refgen` (refgen.__main__)
