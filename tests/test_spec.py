"""Malformed specs fail with an error that names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MINIMAL_SPEC, run_refgen, write_spec_text

from refgen.errors import SpecError
from refgen.spec import load_spec

GOOD = MINIMAL_SPEC.replace('output = "x.json"', 'output = "out/x.json"')


def write(tmp_path: Path, text: str) -> Path:
    return write_spec_text(tmp_path, text)


def test_a_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    # attn_implementation None: from_pretrained picks (and the manifest records what it picked)
    assert (spec.dtype, spec.top_k, spec.attn_implementation) == ("float32", 10, None)
    assert spec.local_path is None
    assert spec.output == tmp_path / "out" / "x.json"  # relative to the spec, not the cwd
    assert spec.lock_path == tmp_path / "spec.lock.json"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('prompts = ["hello"]', "prompts = []"), "'run.prompts' is empty"),
        (lambda t: t.replace('repo = "org/name"\n', ""), "missing required key 'model.repo'"),
        (lambda t: t.replace('prompts = ["hello"]', 'prompts = "hello"'), "'run.prompts' must be"),
        (lambda t: t + "top_k = 0\n", "'run.top_k' must be at least 1"),
        (lambda t: t + 'top_k = "10"\n', "'run.top_k' must be an integer, got a string"),
        (lambda t: t.replace("0123456789abcdef", "main", 1), "full 40-character commit"),
        (lambda t: t.replace("schema = 1", "schema = 2"), "'schema' must be 1"),
        (lambda t: t + "promts = []\n", "unknown key(s) ['promts'] in [run]"),
        (lambda t: t.replace('prompts = ["hello"]', 'prompts = ["ok", ""]'), "'run.prompts[1]'"),
        (lambda t: t.replace("[run]", "[run"), "not valid TOML"),
        (lambda t: t + "[extra]\n", "unknown table(s) ['extra']"),
        (lambda t: t.replace('"out/x.json"', '"out/x.txt"'), "must name a .json file"),
        (lambda t: t.replace("[run]", 'dtype = "float64"\n[run]'), "'model.dtype' must be one"),
        (lambda t: t.replace("[run]", 'attn_implementation = "x"\n[run]'), "must be one of"),
        (
            lambda t: t.replace('repo = "org/name"', 'path = "ckpt"'),
            "content revision `refgen lock` prints",
        ),
    ],
)
def test_malformed_spec_is_named(tmp_path: Path, edit: object, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, edit(GOOD)))  # type: ignore[operator]
    assert message in str(info.value)
    assert "spec.toml" in str(info.value)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtypes(tmp_path: Path, dtype: str) -> None:
    spec = load_spec(write(tmp_path, GOOD.replace("[run]", f'dtype = "{dtype}"\n[run]')))
    assert spec.dtype == dtype


def test_a_local_folder_needs_no_repo_or_revision(tmp_path: Path) -> None:
    text = GOOD.replace('repo = "org/name"\n', 'path = "../my model"\n')
    spec = load_spec(
        write(tmp_path, text.replace('revision = "0123456789abcdef0123456789abcdef01234567"\n', ""))
    )
    assert spec.local_path == (tmp_path.parent / "my model").resolve()
    assert (spec.repo, spec.revision) == ("local/my_model", None)
    assert spec.as_dict()["model"]["path"] == "../my model"


def test_cli_reports_a_bad_spec_without_a_traceback(tmp_path: Path) -> None:
    spec = write(tmp_path, GOOD.replace('prompts = ["hello"]', "prompts = []"))
    result = run_refgen("generate", "--spec", spec, hf_home=tmp_path, check=False)
    assert result.returncode == 2
    assert "refgen: error:" in result.stderr and "'run.prompts' is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")
