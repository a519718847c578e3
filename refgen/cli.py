"""The command line, and the only one: every subcommand's arguments, the error path, exit codes.

Other modules compute and return values; this one parses arguments, prints, and turns every
RefgenError into one `refgen: error: ...` line and its exit code.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from refgen import cleanup, determinism
from refgen.errors import ExitCode, OutputError, RefgenError
from refgen.spec import LOAD_MODES

if TYPE_CHECKING:
    from refgen.artifact import Artifact
    from refgen.spec import Spec

log = logging.getLogger("refgen")


# Each signal the CLI handles -> its exit status (128 + the signal's number, as a shell reports)
SIGNAL_EXITS: dict[signal.Signals, ExitCode] = {
    signal.SIGHUP: ExitCode.HANGUP,
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGQUIT: ExitCode.QUIT,
    signal.SIGTERM: ExitCode.TERMINATED,
}


def _description() -> str:
    """The program's description with every exit code of :class:`ExitCode`."""
    codes = "\n".join(f"  {int(code):>3}  {code.meaning}" for code in ExitCode)
    return (
        "Reproducible reference files for model reimplementations: build them from specs, "
        "verified\nagainst the model lock, and audit them by rebuilding. The nox sessions and "
        "make targets call\nthese commands. --debug shows the traceback of an error (for bug "
        f"reports).\n\nexit codes:\n{codes}"
    )


DESCRIPTION = _description()


def main(argv: Sequence[str] | None = None) -> int:
    # Handlers first: a signal during the imports below must not end in a traceback.
    signals = _Signals.install()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="refgen: %(message)s", stream=sys.stderr)
    if args.debug:
        log.setLevel(logging.DEBUG)
    if signals is None:  # not the main thread (an embedding caller): no signal path of our own
        return _run(args)
    # The work runs on a worker thread; this thread only waits, so SIGINT/SIGTERM (Ctrl-C, docker
    # stop, CI timeouts), SIGHUP (a closed terminal) and SIGQUIT are handled within 0.1 s even
    # while torch computes a forward.
    result: list[int] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(_run(args))
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    worker = threading.Thread(target=work, name="refgen-command", daemon=True)
    worker.start()
    try:
        while worker.is_alive() and signals.received is None:
            worker.join(0.1)
        if signals.received is not None:
            _exit_interrupted(signals.received)
        if failure:
            if isinstance(failure[0], KeyboardInterrupt | cleanup.Interrupted):
                _exit_interrupted(signal.SIGINT)
            raise failure[0]
        return result[0]
    finally:
        signals.restore()  # for callers in the same process (tests, python -m refgen.verify)


def _run(args: argparse.Namespace) -> int:
    """The command itself; every expected failure becomes one ``refgen: error:`` line (after its
    traceback with ``--debug``) and its exit code."""
    try:
        _remove_stale_temporaries()
        with cleanup.torch_cache_directory():
            result: int = args.func(args)
        return result
    except RefgenError as exc:
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        print(f"refgen: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)


def _remove_stale_temporaries() -> None:
    """What killed runs (SIGKILL, a crash) left in TMPDIR: removed when their run is gone, named
    when they carry no owner lock (refgen.cleanup.remove_stale)."""
    found = cleanup.remove_stale()
    if found.removed:
        names = ", ".join(p.name for p in found.removed)
        log.info("removed %d temporary folder(s) of killed runs: %s", len(found.removed), names)
    if found.unowned:
        shown = ", ".join(str(p) for p in found.unowned[:3])
        log.warning(
            "%d temporary folder(s) without an owner lock left as they are (remove them if no "
            "refgen command is running): %s%s",
            len(found.unowned),
            shown,
            ", ..." if len(found.unowned) > 3 else "",
        )


class _Signals:
    """The signals of :data:`SIGNAL_EXITS` only record which arrived; the main thread acts on
    it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> _Signals | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        signals = cls()
        for sig in SIGNAL_EXITS:
            signals.previous[sig] = signal.signal(sig, signals._handle)
        return signals

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:  # the first one counts (a terminal's Ctrl-C, then a SIGTERM)
            self.received = signum


def _exit_interrupted(signum: int) -> NoReturn:
    """Remove this run's temporaries (and stop its child), then leave at once with the signal's
    exit code: the worker may be deep in torch, and nothing it holds needs an orderly shutdown
    (outputs are only ever renamed into place whole)."""
    for sig in SIGNAL_EXITS:
        signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
    cleanup.remove_all()
    name = signal.Signals(signum).name
    print(f"refgen: interrupted ({name}); no output was changed", file=sys.stderr)
    exit_now(SIGNAL_EXITS[signal.Signals(signum)])


def exit_now(code: int) -> NoReturn:
    """End the process with *code* once the logs and standard streams are flushed, skipping
    the interpreter's teardown (which frees every object one by one)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# `crosscheck`'s defaults (refgen.crosscheck's SUBJECTS, DEFAULT_CPUS and DEFAULT_VARIANTS;
# tests/test_cli.py checks they agree): named here so that building the parser does not import
# refgen.crosscheck, and with it numpy, for every command.
CROSSCHECK_SUBJECTS = ("tiny", "larger")
CROSSCHECK_CPUS = ("Haswell-v4", "Skylake-Client-v4", "EPYC-Rome", "EPYC-Milan", "Westmere")
CROSSCHECK_VARIANTS = ("profile", determinism.CONTROL)


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusals in refgen's one error format (still exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"refgen: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="refgen",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error and debug logs (for bug reports)",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="build references from specs (offline, verified)")
    add_spec_arguments(gen, "build")
    gen.add_argument("--output-dir", type=Path, help="write here instead of the spec's output path")
    gen.add_argument("--force", action="store_true", help="rebuild even if up to date")
    gen.add_argument(
        "--keep-going",
        action="store_true",
        help="build the other specs when one fails (each failure is reported with its spec's "
        "name; the exit code is the highest of theirs)",
    )
    gen.add_argument(
        "--load",
        choices=LOAD_MODES,
        help="weights in memory, or streamed layer by layer (faster here, and for models bigger "
        "than RAM); default: the spec's [run] load, else auto (stream; in memory for 100 "
        "prompts or more, or a checkpoint the streamed load refuses, when it fits the budget)",
    )
    gen.add_argument(
        "--stream",
        dest="load",
        action="store_const",
        const="stream",
        help="same as --load stream",
    )
    gen.add_argument(
        "--memory-budget",
        type=_size,
        metavar="SIZE",
        help="memory the run may use, e.g. 6GB (default: the spec's [run] memory_budget, "
        "else 0.75 x available memory)",
    )
    # crosscheck only: the control (`off`) and candidate profiles, recorded in the manifest
    gen.add_argument(
        "--profile-variant", choices=sorted(determinism.VARIANTS), help=argparse.SUPPRESS
    )
    gen.set_defaults(func=cmd_generate)

    fetch = sub.add_parser("fetch", help="download the pinned model files and verify them")
    add_spec_arguments(fetch, "fetch the model of")
    fetch.set_defaults(func=cmd_fetch)

    lock = sub.add_parser(
        "lock", help="record the SHA-256 (and BLAKE3) and size of a spec's model files"
    )
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

    cross = sub.add_parser("crosscheck", help="build under emulated CPUs (qemu) and compare")
    cross.add_argument("--subjects", default=",".join(CROSSCHECK_SUBJECTS), help="%(default)s")
    cross.add_argument("--cpus", default=",".join(CROSSCHECK_CPUS), help="%(default)s")
    cross.add_argument(
        "--variants",
        default=",".join(CROSSCHECK_VARIANTS),
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
    ver = sub.add_parser(
        "verify", help="rebuild references and compare them with the files on disk (auditors)"
    )
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

    # `compare` exits 0 within tolerance, 13 diverged (see refgen.compare.port)
    from refgen.compare.verdict import FLOOR_FACTOR

    port = sub.add_parser(
        "compare",
        help="compare a port's own tensors with a reference: REFERENCE PORT (porters)",
        description="Compare a port's dump (a safetensors file holding any of the reference's "
        "tensors, in any float dtype) with a reference, and name per prompt the first tensor "
        "beyond tolerance. Exit 0 within tolerance, 13 diverged, 2 bad input.",
    )
    port.add_argument("reference", type=Path, help="the reference: X.json or X.safetensors")
    port.add_argument("port", type=Path, help="the port's dump (.safetensors)")
    port.add_argument(
        "--map", type=Path, metavar="MAP.toml", help="the port's tensor names -> refgen's"
    )
    port.add_argument(
        "--prompt",
        type=int,
        default=0,
        metavar="N",
        help="the prompt a dump without prompt{N}. names is for (default 0)",
    )
    port.add_argument(
        "--factor",
        type=float,
        metavar="K",
        help="within when the error RMS is at most K x the reference's own rounding error "
        f"(default {FLOOR_FACTOR:g}; see the README's 'For porters')",
    )
    port.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    port.add_argument("--html", type=Path, metavar="FILE", help="also write the report as a page")
    port.set_defaults(func=cmd_compare)
    for command in sub.choices.values():  # also after the command: `refgen generate --debug`
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _counts(text: str) -> list[int]:
    """A comma-separated list of positive integers (empty: none)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"each number must be at least 1: {text!r}")
    return counts


def _size(text: str) -> int:
    from refgen.spec import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tolerance(text: str) -> float:
    """A finite number >= 0: NaN would call equal floats different, inf any rebuild equal."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _load_options(args: argparse.Namespace, spec: Any) -> Any:
    """The CLI's --load/--memory-budget over the spec's [run] load/memory_budget."""
    from refgen.load.plan import LoadOptions

    budget = args.memory_budget if args.memory_budget is not None else spec.memory_budget
    return LoadOptions(args.load or spec.load, budget)


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
        "--atol", type=_tolerance, help="absolute tolerance (default: spec's, else 1e-6)"
    )
    parser.add_argument(
        "--rtol", type=_tolerance, help="relative tolerance (default: spec's, else 1e-6)"
    )
    parser.add_argument("--json", action="store_true", help="print the machine-readable report")


def _specs(args: argparse.Namespace) -> list[Path]:
    from refgen.spec import find_specs

    return list(args.spec) if args.spec else find_specs(args.specs_dir)


def cmd_generate(args: argparse.Namespace) -> int:
    determinism.apply_environment(args.profile_variant)
    from refgen import manifest
    from refgen.generate import destination
    from refgen.spec import load_spec

    specs = [load_spec(p) for p in _specs(args)]  # validate all before building any
    manifest.check_environment()  # SOURCE_DATE_EPOCH, REFGEN_IMAGE_LAYERS: before any compute
    # every destination checked before building any (refgen.paths: confinement, no links), and
    # a folder we cannot write is named now, not after the model ran
    destinations = [destination(s, args.output_dir) for s in specs]
    refuse_collisions(specs, destinations)
    for outputs in destinations:
        check_writable(outputs.reference.parent)
    failed: dict[str, int] = {}
    for spec, outputs in zip(specs, destinations, strict=True):
        try:
            _generate_one(args, spec, outputs)
        except Exception as exc:
            if not args.keep_going:
                raise
            failed[spec.path.name] = _report_failure(spec.path.name, exc)
    if failed:
        listed = ", ".join(f"{name} (exit {code})" for name, code in failed.items())
        log.info("%d of %d specs failed: %s", len(failed), len(specs), listed)
        return max(failed.values())
    return 0


def _generate_one(args: argparse.Namespace, spec: Spec, outputs: Artifact) -> None:
    from refgen.audit import is_up_to_date
    from refgen.generate import generate

    # one run per set at a time, from the up-to-date check to the commit (refgen.artifact)
    name = printable(spec.name)
    with outputs.locked():
        if not args.force:
            status = is_up_to_date(spec, outputs.manifest)
            if status:
                log.info("%s is up to date, nothing to do (--force rebuilds)", name)
                return
            log.info("%s needs a build: %s", name, "; ".join(status.reasons))
        log.info("generating %s (%s@%s)", name, spec.repo, spec.revision)
        built = generate(spec, args.output_dir, load=_load_options(args, spec))
    written = [p.name for k, p in built.paths().items() if k != "reference" and p.is_file()]
    log.info("wrote %s (+ %s)", built.reference, ", ".join(written))


def _report_failure(name: str, exc: Exception) -> int:
    """--keep-going: one spec's failure as its error line (an unexpected exception, a bug, with
    its traceback); returns its exit code."""
    if isinstance(exc, RefgenError):
        print(f"refgen: error: {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"refgen: error: {name}: unexpected {type(exc).__name__} (a bug in refgen or the "
        "model's code; the traceback follows)",
        file=sys.stderr,
    )
    traceback.print_exception(exc, file=sys.stderr)
    return 1


def refuse_collisions(specs: Sequence[Spec], sets: Sequence[Artifact]) -> None:
    """Two specs of one run may not share a file (any sibling, or the lock): the second would
    overwrite the first's set. Refused before anything runs."""
    owner: dict[tuple[Path, str], Spec] = {}
    for spec, outputs in zip(specs, sets, strict=True):
        folder = outputs.reference.parent.resolve()
        for name in outputs.names():
            first = owner.setdefault((folder, name), spec)
            if first is not spec:
                raise OutputError(
                    f"{first.display} and {spec.display} both write {folder / name}: the second "
                    "would overwrite the first's set. Give each spec its own 'reference.output' "
                    "name."
                )


def printable(text: str) -> str:
    """*text* for one log line: a line break or any other non-printable character (a spec's
    ``reference.name`` may hold one) is written as its escape, e.g. ``\\n``."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def check_writable(folder: Path) -> None:
    """The output folder (or the nearest existing parent it will be created in) must accept new
    files: the outputs are written as temporaries there and renamed into place."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"the output folder {folder} is not a folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to the output folder {existing} (permission denied for this user). "
            "Make it writable, or pass --output-dir DIR with a folder you can write to."
        )


def cmd_fetch(args: argparse.Namespace) -> int:
    from refgen import hub
    from refgen.spec import load_spec

    hub.log_retries_once()
    for spec in [load_spec(p) for p in _specs(args)]:
        fetched = hub.fetch_model(spec)
        how = "downloaded and verified" if fetched.downloaded else "already in the cache, verified"
        log.info("%s@%s %s in %s", spec.repo, spec.revision, how, fetched.folder)
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from refgen import hub
    from refgen.spec import load_spec

    spec = load_spec(args.spec)
    hub.log_retries_once()
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
    # the demo's model is in its own cache: verify reads it only with HF_HOME pointing there
    print(
        f"verify them with: HF_HOME={out / 'hf-home'} {sys.executable} -m refgen verify "
        f"--spec {spec.path}"
    )
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
    from refgen import manifest, verify

    manifest.check_environment()  # what the rebuild would refuse, refused before any check
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


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare a port's dump with a reference; print the report; 0 within, 13 diverged."""
    import json

    from refgen.compare import CompareError, namemap, port
    from refgen.compare.verdict import FLOOR_FACTOR

    factor = FLOOR_FACTOR if args.factor is None else args.factor
    if not 0 < factor < float("inf"):
        raise CompareError(f"--factor must be a positive number, not {args.factor}")
    inputs = {p.resolve() for p in (args.reference, args.port, args.map) if p is not None}
    inputs |= {p.with_suffix(".safetensors") for p in inputs if p.suffix == ".json"}
    for option, target in (("--json", args.json), ("--html", args.html)):
        if target is not None:
            if target.resolve() in inputs:
                raise OutputError(
                    f"{target} is an input of this comparison, and refgen never overwrites an "
                    "input. Write the report elsewhere."
                )
            # as generate treats a spec's output: a missing folder is refused, not created
            if not target.parent.is_dir():
                raise OutputError(
                    f"the folder of {option} does not exist or is not a folder: "
                    f"{target.parent}. Create it first, or write the report into a folder "
                    "that exists."
                )
            check_writable(target.parent)
    names = namemap.load(args.map) if args.map is not None else namemap.IDENTITY
    result = port.compare_port(
        args.reference, args.port, names=names, prompt=args.prompt, factor=factor
    )
    if args.json is not None:
        _write_report(args.json, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    if args.html is not None:
        from refgen.compare import html

        _write_report(args.html, html.render(result))
    sys.stdout.write(result.render())
    return result.exit_code


def _write_report(path: Path, text: str) -> None:
    """A report file, whole or not at all; never over an input."""
    from refgen import atomic

    atomic.write_files({path: text.encode()})


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
    parser.add_argument(
        "--shape",
        choices=["real", "8b", "tiny"],
        default="real",
        help="real: Qwen3-1.7B-Base (ours in memory and streamed vs the original method); 8b: "
        "that, then a Llama-3-8B-shaped checkpoint (16 GB, bigger than memory in F32): ours "
        "streamed, accelerate's disk offload and the original method under a memory cap; tiny: "
        "both parts at test-suite sizes",
    )
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    parser.add_argument(
        "--cost-prompts",
        type=_counts,
        default=",".join(map(str, run.COST_PROMPTS)),
        help="the cost model's numbers of prompts, comma-separated, each in memory and streamed "
        "(default 1,3,100,1000; empty: no cost model)",
    )
    parser.add_argument(
        "--cost-runs", type=int, default=2, help="alternating runs of each cost-model row (2)"
    )
    parser.add_argument(
        "--rss-cap",
        type=_size,
        default="12GB",
        help="8b: a watchdog kills the original method and accelerate past this much anonymous "
        "memory (12GB)",
    )
    args = parser.parse_args(argv)
    return run.main(
        args.cache,
        args.runs,
        args.shape,
        scaling=not args.no_scaling,
        rss_cap=args.rss_cap,
        cost_prompts=args.cost_prompts,
        cost_runs=args.cost_runs,
    )
