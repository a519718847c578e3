"""Print the table case -> exit code -> first line of the message for test_hostile's CLI cases.

    PYTHONPATH=. python tests/hostile_table.py [--refgen DIR]

``--refgen DIR`` runs the cases against the refgen sources in DIR (e.g. an older checkout), to
show what each case did before; the cases themselves come from tests/test_hostile.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest
import test_hostile

from refgen import tiny


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refgen", type=Path, help="run these refgen sources (PYTHONPATH)")
    args = parser.parse_args()
    env = {"PYTHONPATH": str(args.refgen.resolve())} if args.refgen else {}
    with tempfile.TemporaryDirectory() as tmp:
        setup = conftest._make_setup(Path(tmp) / "master")
        print("| case | exit | first line of stderr | tree unchanged |")
        print("| --- | ---: | --- | --- |")
        for name, prepare, _, _, extra in test_hostile.CASES:
            work = Path(tmp) / "case"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(setup.hf_home.parent, work / "tiny", symlinks=True)
            old = setup.checkpoint
            snapshot = work / "tiny" / old.snapshot.relative_to(setup.hf_home.parent)
            copy = conftest.TinySetup(
                work / "tiny" / "hf-home",
                tiny.TinyCheckpoint(old.repo, old.revision, snapshot),
                work / "tiny" / "specs" / setup.spec.name,
            )
            case = test_hostile.Case(copy, work)
            for suffix in test_hostile.SIBLINGS:
                (case.out / f"{test_hostile.NAME}{suffix}").write_bytes(test_hostile.OLD)
            cli_args = prepare(case)
            run_env = dict(extra)
            if run_env.get("HF_HUB_CACHE") == "@file":
                run_env["HF_HUB_CACHE"] = str(work / "cache-file")
                Path(run_env["HF_HUB_CACHE"]).write_text("a file\n")
            before = test_hostile.snapshot(work)
            # cwd outside the checkout: `python -m` puts the cwd first on sys.path
            result = conftest.run_refgen(
                *cli_args, hf_home=copy.hf_home, env={**run_env, **env}, cwd=work, check=False
            )
            lines = result.stderr.splitlines()
            shown = next((x for x in lines if "error" in x.lower()), lines[-1] if lines else "")
            if "Traceback" in result.stderr:
                shown = "Traceback ... " + (lines[-1] if lines else "")
            unchanged = "yes" if test_hostile.snapshot(work) == before else "**no**"
            shown = shown.replace("|", "\\|")[:160]
            print(f"| {name} | {result.returncode} | `{shown}` | {unchanged} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
