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
        (lambda t: t.replace("schema = 1", "schema = 2"), "'schema' must be the integer 1"),
        (lambda t: t + "promts = []\n", "unknown key(s) ['promts'] in [run]"),
        (lambda t: t.replace('prompts = ["hello"]', 'prompts = ["ok", ""]'), "'run.prompts[1]'"),
        (lambda t: t.replace("[run]", "[run"), "not valid TOML"),
        (lambda t: t + "[extra]\n", "unknown table [extra]"),
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


LAYERS_100K = "[" + ", ".join(map(str, range(100_000))) + "]"
ZEROS = "0" * 400
FINITE = "'verify.tolerance' must be a finite number >= 0, got"
SIZE = "'run.memory_budget' must be a size: a string such as \"16GB\" or an integer number of bytes"


def _top(line: str) -> object:
    return lambda t: t.replace("schema = 1\n", f"schema = 1\n{line}\n")


def _add(text: str) -> object:
    return lambda t: t + text + "\n"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # schema: the integer 1, not a value equal to it
        (lambda t: t.replace("schema = 1", "schema = true"), "must be the integer 1 (got True)"),
        (lambda t: t.replace("schema = 1", "schema = 1.0"), "must be the integer 1 (got 1.0)"),
        # tolerances: finite and >= 0
        (_add("[verify]\ntolerance = inf"), f"{FINITE} inf"),
        (_add("[verify]\ntolerance = nan"), f"{FINITE} nan"),
        (_add("[verify]\ntolerance = -1e-6"), f"{FINITE} -1e-06"),
        (_add(f"[verify]\ntolerance = 1{ZEROS}"), f"{FINITE} 1000"),
        # memory_budget: the exact type, and no overflow
        (_add("memory_budget = 1.5"), f"{SIZE}, got a float (1.5)"),
        (_add(f"memory_budget = 1{ZEROS}"), "bytes is more than any machine has"),
        (_add(f'memory_budget = "1{ZEROS}GB"'), "'run.memory_budget': not a size: '1000"),
        (_add('memory_budget = "9999999999999TB"'), "more than any machine has"),
        # a top-level key that belongs in a table is named as such
        (_top("top_k = 3"), "unknown top-level key 'top_k'. It belongs in [run]"),
        (_top("colour = 3"), "unknown top-level key 'colour'. The top level holds only 'schema'"),
        # a probe list longer than any model, refused at spec time in a short message
        (_add(f"[probes]\nhidden_states = {LAYERS_100K}"), "'probes.hidden_states' lists 100000"),
        (_add("[probes]\nhidden_states = [1, 2, 1]"), "lists layer 1 twice"),
    ],
)
def test_numbers_and_keys_are_strict(tmp_path: Path, edit: object, message: str) -> None:
    """Issue 19 minor list: each refusal exact and short (a message never echoes a huge value)."""
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, edit(GOOD)))  # type: ignore[operator]
    assert message in str(info.value)
    assert len(str(info.value)) < 400, len(str(info.value))


def test_a_size_is_exact() -> None:
    from refgen.spec import parse_size

    assert parse_size("1.001GB") == 1_001_000_000  # float arithmetic gives 1,000,999,999
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size(2**63 - 1) == 2**63 - 1
