"""The command line, and the only one: every subcommand's arguments, the error path, exit codes.

Other modules compute and return values; this one parses arguments, prints, and turns every
RefgenError into one `refgen: error: ...` line and its exit code.
"""

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

log = logging.getLogger("refgen")


DESCRIPTION = """\
Reproducible reference files for model reimplementations: build them from specs, verified
against the model lock, and audit them by rebuilding. The nox sessions and make targets call
these commands.

exit codes: 0 success (verify/diff: reproduced bit for bit), 10 reproduced within tolerance,
11 not reproduced, 2 bad input or could not run, 3 a model file does not match its lock,
130/143 interrupted (Ctrl-C / SIGTERM; no output was changed)."""


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
    parser = argparse.ArgumentParser(
        prog="refgen",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="build references from specs (offline, verified)")
    add_spec_arguments(gen, "build")
    gen.add_argument("--output-dir", type=Path, help="write here instead of the spec's output path")
    gen.add_argument("--force", action="store_true", help="rebuild even if up to date")
    # crosscheck only: the control (`off`) and candidate profiles, recorded in the manifest
    gen.add_argument(
        "--profile-variant", choices=sorted(determinism.VARIANTS), help=argparse.SUPPRESS
    )
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

    from refgen import crosscheck

    cross = sub.add_parser("crosscheck", help="build under emulated CPUs (qemu) and compare")
    cross.add_argument("--subjects", default=",".join(crosscheck.SUBJECTS), help="%(default)s")
    cross.add_argument("--cpus", default=",".join(crosscheck.DEFAULT_CPUS), help="%(default)s")
    cross.add_argument(
        "--variants",
        default=",".join(crosscheck.DEFAULT_VARIANTS),
        help=f"%(default)s; also {', '.join(v for v in determinism.VARIANTS if v != 'off')}",
    )
    cross.add_argument("--jobs", type=int, default=2, help="runs at a time (%(default)s)")
    cross.add_argument("--work-dir", type=Path, help="keep checkpoints and outputs here")
    cross.add_argument(
        "--bench", type=int, default=0, metavar="ROUNDS", help="instead, time forwards natively"
    )
    cross.set_defaults(func=cmd_crosscheck)

    # `verify` and `diff` exit with the verdict: 0 bit for bit, 10 within tolerance, 11 not
    # reproduced (see refgen.compare).
    ver = sub.add_parser("verify", help="rebuild committed references and compare (auditors)")
    add_spec_arguments(ver, "verify the artifact of")
    ver.add_argument(
        "--reference", type=Path, help="the JSON to verify (default: the spec's output path)"
    )
    add_tolerance_arguments(ver)
    ver.set_defaults(func=cmd_verify)

    diff = sub.add_parser("diff", help="numeric comparison of two references: A.json B.json")
    diff.add_argument("a", type=Path, help="the reference taken as expected (A)")
    diff.add_argument("b", type=Path, help="the reference compared with it (B)")
    diff.add_argument("--spec", type=Path, help="take the tolerance from this spec's [verify]")
    add_tolerance_arguments(diff)
    diff.set_defaults(func=cmd_diff)
    return parser


def add_spec_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--spec`` (repeatable) and ``--specs-dir``, shared by every command that takes specs."""
    parser.add_argument("--spec", type=Path, action="append", help="a spec file (repeatable)")
    parser.add_argument(
        "--specs-dir",
        type=Path,
        default=Path("specs"),
        help=f"without --spec, {verb} every *.toml here (default: specs)",
    )


def add_tolerance_arguments(parser: argparse.ArgumentParser) -> None:
    """Shared by ``diff`` and ``verify``."""
    parser.add_argument(
        "--atol", type=float, help="absolute tolerance (default: spec's, else 1e-6)"
    )
    parser.add_argument(
        "--rtol", type=float, help="relative tolerance (default: spec's, else 1e-6)"
    )
    parser.add_argument("--json", action="store_true", help="print the machine-readable report")


def _specs(args: argparse.Namespace) -> list[Path]:
    from refgen.spec import find_specs

    return list(args.spec) if args.spec else find_specs(args.specs_dir)


def cmd_generate(args: argparse.Namespace) -> int:
    determinism.apply_environment(args.profile_variant)
    from refgen.artifact import Artifact, is_up_to_date
    from refgen.generate import generate
    from refgen.spec import load_spec

    specs = [load_spec(p) for p in _specs(args)]  # validate all before building any
    for spec in specs:
        if not args.force:
            status = is_up_to_date(spec, Artifact.of(spec, args.output_dir).manifest)
            if status:
                log.info("%s is up to date, nothing to do (--force rebuilds)", spec.name)
                continue
            log.info("%s needs a build: %s", spec.name, "; ".join(status.reasons))
        log.info("generating %s (%s@%s)", spec.name, spec.repo, spec.revision)
        outputs = generate(spec, args.output_dir)
        written = [p.name for k, p in outputs.paths().items() if k != "reference" and p.is_file()]
        log.info("wrote %s (+ %s)", outputs.reference, ", ".join(written))
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
    shown = (spec.path, spec.lock_path, *(p for p in outputs.paths().values() if p.is_file()))
    for path in shown:
        print(f"  {path.relative_to(out)}")
    print(f"check them with: (cd {out} && sha256sum -c {outputs.sums.name})")
    return 0


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from refgen import crosscheck

    return crosscheck.run(
        args.subjects,
        args.cpus,
        args.variants,
        jobs=args.jobs,
        workdir=args.work_dir,
        bench_rounds=args.bench,
    )


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify each spec's artifact, print reports; the exit code is the worst verdict's."""
    from refgen import verify

    results = verify.verify_specs(_specs(args), args.reference, args.atol, args.rtol)
    sys.stdout.write(verify.report(results, args.json))
    return max(r.exit_code for r in results)


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare, print the report (human or --json), return the verdict's exit code."""
    import json

    from refgen import compare

    tol = compare.tolerance_from_spec(args.spec, args.atol, args.rtol)
    result = compare.compare_files(args.a, args.b, tol)
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(result.render())
    return result.exit_code


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``python -m refgen.bench``: its own program (a benchmark, not a refgen command)."""
    from refgen.bench import run

    parser = argparse.ArgumentParser(
        prog="python -m refgen.bench",
        description="The benchmark: baseline (the original script's from_pretrained) vs refgen "
        "generate at the real model's shape, alternating child runs; prints medians and the "
        "ratios ours / baseline, and writes results.json and results.md under --cache.",
    )
    parser.add_argument("--runs", type=int, default=5, help="alternating runs of each (default 5)")
    parser.add_argument(
        "--cache", type=Path, default=run.DEFAULT_CACHE, help="checkpoint + work folder"
    )
    parser.add_argument("--shape", choices=["real", "tiny"], default="real")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    args = parser.parse_args(argv)
    return run.main(args.cache, args.runs, args.shape, scaling=not args.no_scaling)
