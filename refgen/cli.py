"""Command line: ``python -m refgen {generate,fetch,lock,demo}``; nox sessions call these."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from refgen import determinism
from refgen.errors import RefgenError
from refgen.spec import add_spec_arguments

log = logging.getLogger("refgen")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="refgen: %(message)s", stream=sys.stderr)
    # SIGTERM (docker stop, CI timeouts) unwinds like Ctrl-C, so temporary files are removed.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result: int = args.func(args)
        return result
    except RefgenError as exc:
        print(f"refgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        print("refgen: interrupted; no output was changed", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that ``finally`` blocks clean up."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refgen", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="build references from specs (offline, verified)")
    add_spec_arguments(gen, "build")
    gen.add_argument("--output-dir", type=Path, help="write here instead of the spec's output path")
    gen.add_argument("--force", action="store_true", help="rebuild even if up to date")
    gen.set_defaults(func=cmd_generate)

    fetch = sub.add_parser("fetch", help="download the pinned model files and verify them")
    add_spec_arguments(fetch, "fetch the model of")
    fetch.set_defaults(func=cmd_fetch)

    lock = sub.add_parser("lock", help="record the SHA-256 of a spec's model files")
    lock.add_argument("--spec", type=Path, required=True)
    lock.add_argument(
        "--offline",
        action="store_true",
        help="hash a snapshot already in the local cache instead of downloading",
    )
    lock.set_defaults(func=cmd_lock)

    demo = sub.add_parser("demo", help="the whole pipeline on a tiny local checkpoint, offline")
    demo.add_argument("--output-dir", type=Path, default=Path("build/demo"))
    demo.set_defaults(func=cmd_demo)

    # `verify` and `diff` exit with the verdict: 0 bit for bit, 10 within tolerance, 11 not
    # reproduced (see refgen.compare). Their imports are torch-free.
    from refgen import compare, verify

    ver = sub.add_parser("verify", help="rebuild committed references and compare (auditors)")
    verify.add_verify_arguments(ver)
    ver.set_defaults(func=verify.run_verify)
    diff = sub.add_parser("diff", help="numeric comparison of two references: A.json B.json")
    compare.add_diff_arguments(diff)
    diff.set_defaults(func=compare.run_diff)
    return parser


def _specs(args: argparse.Namespace) -> list[Path]:
    from refgen.spec import find_specs

    return list(args.spec) if args.spec else find_specs(args.specs_dir)


def cmd_generate(args: argparse.Namespace) -> int:
    determinism.apply_environment()
    from refgen.generate import generate, output_paths
    from refgen.spec import load_spec
    from refgen.verify import is_up_to_date

    specs = [load_spec(p) for p in _specs(args)]  # validate all before building any
    for spec in specs:
        if not args.force:
            status = is_up_to_date(spec, output_paths(spec, args.output_dir).manifest)
            if status:
                log.info("%s is up to date, nothing to do (--force rebuilds)", spec.name)
                continue
            log.info("%s needs a build: %s", spec.name, "; ".join(status.reasons))
        log.info("generating %s (%s@%s)", spec.name, spec.repo, spec.revision)
        outputs = generate(spec, args.output_dir)
        log.info(
            "wrote %s (+ %s, %s, %s)",
            outputs.reference,
            outputs.manifest.name,
            outputs.statement.name,
            outputs.sums.name,
        )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from refgen import hub
    from refgen.spec import load_spec

    for spec in [load_spec(p) for p in _specs(args)]:
        folder = hub.fetch(spec)
        log.info("%s@%s fetched and verified in %s", spec.repo, spec.revision, folder)
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from refgen import hub
    from refgen.spec import load_spec

    spec = load_spec(args.spec)
    result = hub.lock(spec, offline=args.offline)
    log.info(
        "locked %d files of %s@%s in %s",
        len(result.files),
        result.repo,
        result.revision,
        spec.lock_path,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Tiny checkpoint -> spec -> lock -> verified generation, all local, under --output-dir."""
    out = args.output_dir.resolve()
    os.environ["HF_HOME"] = str(out / "hf-home")  # before huggingface_hub reads its constants
    determinism.apply_environment()
    from refgen import hub, tiny
    from refgen.generate import generate
    from refgen.spec import load_spec

    checkpoint = tiny.build(out / "hf-home" / "hub")
    spec_dir = out / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(tiny.write_spec(spec_dir, checkpoint.revision, "../tiny_qwen3_reference.json"))
    hub.lock(spec, offline=True)
    outputs = generate(spec)
    print(f"demo outputs in {out}:")
    shown = (spec.path, spec.lock_path, *vars(outputs).values())
    for path in shown:
        print(f"  {path.relative_to(out)}")
    print(f"check them with: (cd {out} && sha256sum -c {outputs.sums.name})")
    return 0
