"""The command line's contract: every exit code in one enum, listed by ``--help`` and the
README; every error class in ``refgen.errors``; ``--debug`` shows the traceback."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TinySetup, run_refgen

from refgen import cli, errors
from refgen.errors import ExitCode, RefgenError


def test_help_lists_every_exit_code() -> None:
    text = cli._parser().format_help()
    listed = {int(m) for m in re.findall(r"^\s+(\d+)  \S", text, re.MULTILINE)}
    assert listed == {int(code) for code in ExitCode}
    for code in ExitCode:
        assert code.meaning in " ".join(text.split()), code


def test_readme_lists_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Refused input: messages and exit codes", 1)[1].split("\n## ", 1)[0]
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert rows == {int(code) for code in ExitCode}


def _error_classes(path: Path) -> list[str]:
    """Classes defined in *path* whose name or a base's name ends in Error."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef):
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            if any(b.endswith("Error") for b in bases) and not node.name.startswith("_"):
                found.append(node.name)
    return found


def test_every_error_class_is_in_errors() -> None:
    """refgen.bench is a program of its own (its ChildFailed is not a refgen error)."""
    elsewhere = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / "refgen").rglob("*.py"))
        if path.name != "errors.py"
        and "bench" not in path.relative_to(ROOT).parts
        and (names := _error_classes(path))
    }
    assert elsewhere == {}
    for name in _error_classes(ROOT / "refgen" / "errors.py"):
        cls = getattr(errors, name)
        # the bounded reader's OSErrors are caught by their callers, which name the file
        assert issubclass(cls, RefgenError | OSError), name
        if issubclass(cls, RefgenError):
            assert isinstance(cls.exit_code, ExitCode), name


@pytest.mark.parametrize("argv", [["--debug", "lock"], ["lock", "--debug"]])
def test_debug_shows_the_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    code = cli.main([*argv, "--spec", str(missing)])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE
    assert "Traceback (most recent call last)" in err and "SpecError" in err
    assert err.rstrip().splitlines()[-1].startswith("refgen: error: spec file not found")


def test_without_debug_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["lock", "--spec", str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE
    assert "Traceback" not in err
    assert err.startswith("refgen: error: spec file not found")


def test_printable_escapes_line_breaks() -> None:
    assert cli.printable("a\nb\u2028c\x85d\te") == "a\\nb\\u2028c\\x85d\\te"
    assert cli.printable("plain name-1") == "plain name-1"


def test_a_name_with_a_line_break_stays_on_its_log_line(tiny_copy: TinySetup) -> None:
    """Issue 19 minor list: reference.name goes into the log escaped, so it cannot forge a line."""
    spec = tiny_copy.spec
    spec.write_text(spec.read_text().replace('name = "tiny-qwen3-forward"',
                                             'name = "x\\nrefgen: error: forged"'))  # fmt: skip
    result = run_refgen("generate", "--spec", spec, hf_home=tiny_copy.hf_home)
    assert "refgen: generating x\\nrefgen: error: forged (" in result.stderr, result.stderr
    assert not any(line.startswith("refgen: error") for line in result.stderr.splitlines())


HEAVY = ("numpy", "torch", "refgen.crosscheck")


@pytest.mark.parametrize(
    "code",
    [
        "import runpy, sys\nsys.argv = ['refgen', 'generate', '--help']\n"
        "try:\n    runpy.run_module('refgen', run_name='__main__')\nexcept SystemExit:\n    pass",
        "import refgen.cli",
    ],
    ids=["generate --help", "import refgen.cli"],
)
def test_startup_imports_no_numpy_and_no_crosscheck(code: str) -> None:
    """Every command builds the whole parser: it must not import crosscheck (and with it numpy)
    or torch; a host's numpy or BLAS then cannot break `generate --help` (it once did)."""
    check = f"\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code + check],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_crosscheck_defaults_are_crosschecks_own() -> None:
    from refgen import crosscheck

    assert tuple(crosscheck.SUBJECTS) == cli.CROSSCHECK_SUBJECTS
    assert cli.CROSSCHECK_CPUS == crosscheck.DEFAULT_CPUS
    assert cli.CROSSCHECK_VARIANTS == crosscheck.DEFAULT_VARIANTS
