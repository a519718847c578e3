"""The numeric comparison: verdicts, paths, per-field/per-case statistics, swaps, exit codes."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import run_refgen

from refgen import cli, compare
from refgen.compare import Tolerance, Verdict, compare_documents


def make_reference(hidden: int = 8, cases: int = 3, k: int = 10) -> dict[str, Any]:
    """A small reference with the consumer's keys; values are arbitrary but fixed."""
    test_cases = []
    for c in range(cases):
        top = [
            {"index": 100 * c + 7 * r + 1, "logit": 30.0 - 1.37 * r - 0.11 * c} for r in range(k)
        ]
        residual = [math.sin(0.3 * i + c) * 2.5 for i in range(hidden)]
        test_cases.append(
            {
                "prompt": f"prompt number {c}",
                "tokens": [11 + c, 22 + c, 33 + c],
                "top_10": top,
                "last_residual_f32": residual,
            }
        )
    return {
        "model_repo": "Qwen/Qwen3-1.7B-Base",
        "hidden_size": hidden,
        "num_layers": 2,
        "vocab_size": 1000,
        "head_dim": 4,
        "use_qk_norm": True,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "torch_version": "2.13.0+cpu",
        "transformers_version": "5.24.0",
        "methodology": "test",
        "test_cases": test_cases,
    }


def dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


def run(a: dict[str, Any], b: dict[str, Any], **kw: Any) -> compare.Comparison:
    return compare_documents(a, b, a_bytes=dump(a), b_bytes=dump(b), **kw)


def test_same_bytes_is_bit_for_bit() -> None:
    a = make_reference()
    result = run(a, copy.deepcopy(a))
    assert result.verdict is Verdict.IDENTICAL
    assert result.exit_code == 0
    assert result.a_sha256 == result.b_sha256
    assert result.summary().startswith("REPRODUCED BIT FOR BIT")
    assert result.differences == ()


def test_formatting_only_difference_is_within_tolerance_with_zero_diff() -> None:
    a = make_reference()
    result = compare_documents(a, a, a_bytes=dump(a), b_bytes=json.dumps(a, indent=4).encode())
    assert result.verdict is Verdict.WITHIN_TOLERANCE
    assert all(f.max_abs == 0.0 for f in result.fields)
    assert "formatting" in result.summary()


def test_logit_perturbed_by_1e_7_is_within_tolerance_with_path_and_size() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    original = a["test_cases"][1]["top_10"][3]["logit"]
    b["test_cases"][1]["top_10"][3]["logit"] = original + 1e-7
    expected = abs((original + 1e-7) - original)  # the float64 step actually taken

    result = run(a, b)

    assert result.verdict is Verdict.WITHIN_TOLERANCE
    assert result.exit_code == 10
    stats = {f.field: f for f in result.fields}
    assert stats["top_10.logit"].max_abs == pytest.approx(expected, rel=1e-12)
    assert stats["top_10.logit"].max_abs_path == "test_cases[1].top_10[3].logit"
    assert stats["top_10.logit"].max_rel == pytest.approx(expected / (original + 1e-7), rel=1e-9)
    assert stats["top_10.logit"].count == 30
    assert stats["last_residual_f32"].max_abs == 0.0
    per_case = {c.case: {f.field: f for f in c.fields} for c in result.cases}
    assert per_case[1]["top_10.logit"].max_abs == pytest.approx(expected, rel=1e-12)
    assert per_case[0]["top_10.logit"].max_abs == 0.0
    assert per_case[2]["top_10.logit"].max_abs == 0.0
    assert "test_cases[1].top_10[3].logit" in result.summary()
    assert "1e-07" in result.summary()


def test_residual_perturbation_is_reported_under_its_field() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["test_cases"][2]["last_residual_f32"][5] += 5e-7
    result = run(a, b)
    assert result.verdict is Verdict.WITHIN_TOLERANCE
    stats = {f.field: f for f in result.fields}
    assert stats["last_residual_f32"].max_abs_path == "test_cases[2].last_residual_f32[5]"
    assert stats["last_residual_f32"].max_abs == pytest.approx(5e-7, rel=1e-6)
    assert stats["last_residual_f32"].count == 3 * 8


def test_float_beyond_tolerance_is_not_reproduced() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["test_cases"][0]["last_residual_f32"][2] += 1e-3
    result = run(a, b)
    assert result.verdict is Verdict.NOT_REPRODUCED
    assert result.exit_code == 11
    assert [d.path for d in result.differences] == ["test_cases[0].last_residual_f32[2]"]
    assert result.differences[0].kind == "float"


def test_swapped_top_k_entries_are_named() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    top = b["test_cases"][1]["top_10"]
    top[3], top[4] = top[4], top[3]
    i3, i4 = a["test_cases"][1]["top_10"][3]["index"], a["test_cases"][1]["top_10"][4]["index"]

    result = run(a, b)

    assert result.verdict is Verdict.NOT_REPRODUCED
    swaps = [d for d in result.differences if d.kind == "swap"]
    assert len(swaps) == 1
    assert swaps[0].path == "test_cases[1].top_10[3]"
    assert f"index {i3} and index {i4}" in swaps[0].detail
    assert "ranks 3 and 4 swapped" in swaps[0].detail
    index_paths = [d.path for d in result.differences if d.kind == "index"]
    assert index_paths == ["test_cases[1].top_10[3].index", "test_cases[1].top_10[4].index"]
    assert result.summary().startswith("NOT REPRODUCED")
    assert "swapped" in result.render()


def test_index_not_in_other_top_k() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["test_cases"][0]["top_10"][9]["index"] = 999
    result = run(a, b)
    assert result.verdict is Verdict.NOT_REPRODUCED
    (d,) = result.differences
    assert d.path == "test_cases[0].top_10[9].index"
    assert "not in B's top-k" in d.detail
    assert (d.a, d.b) == (a["test_cases"][0]["top_10"][9]["index"], 999)


def test_removed_test_case_and_edited_prompt() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    del b["test_cases"][2]
    b["test_cases"][0]["prompt"] = "edited"
    result = run(a, b)
    assert result.verdict is Verdict.NOT_REPRODUCED
    paths = [d.path for d in result.differences]
    assert paths == ["test_cases", "test_cases[0].prompt", "test_cases[2]"]
    assert result.differences[2].kind == "missing"


def test_structure_and_type_differences() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["hidden_size"] = 8.0
    b["extra_key"] = 1
    del b["use_qk_norm"]
    b["test_cases"][1]["tokens"].append(5)
    result = run(a, b)
    kinds = {d.path: d.kind for d in result.differences}
    assert kinds == {
        "extra_key": "extra",
        "hidden_size": "type",
        "test_cases[1].tokens": "length",
        "use_qk_norm": "missing",
    }


def test_informational_keys_are_notes_not_failures() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["torch_version"] = "2.10.0+cu130"
    result = run(a, b)
    assert result.verdict is Verdict.WITHIN_TOLERANCE
    assert any("torch_version" in n for n in result.notes)


def test_relative_part_accepts_one_ulp_at_large_logit() -> None:
    import numpy as np

    x = np.float32(31.789642333984375)
    up = float(np.nextafter(x, np.float32(100)))
    assert Tolerance().accepts(float(x), up)
    assert not Tolerance(atol=1e-6, rtol=0.0).accepts(float(x), up)
    assert not Tolerance().accepts(1.0, float("nan"))
    assert not Tolerance().accepts(float("nan"), float("nan"))


@pytest.mark.parametrize("a_value", [float("nan"), 0.5])
def test_nan_is_never_within_tolerance(a_value: float) -> None:
    """NaN against a number, and NaN against NaN, is not reproduced; the path is named."""
    a = make_reference()
    b = copy.deepcopy(a)
    a["test_cases"][1]["last_residual_f32"][2] = a_value
    b["test_cases"][1]["last_residual_f32"][2] = float("nan")
    result = run(a, b)  # for NaN vs NaN even the bytes are the same
    assert result.verdict is Verdict.NOT_REPRODUCED
    assert [d.path for d in result.differences] == ["test_cases[1].last_residual_f32[2]"]
    assert "NaN is never within tolerance" in result.differences[0].detail


def test_nan_files_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_reference()
    a["test_cases"][0]["top_10"][0]["logit"] = float("nan")
    pa = tmp_path / "a.json"
    pb = tmp_path / "b.json"
    pa.write_text(json.dumps(a, indent=2))  # Python writes the NaN literal
    pb.write_text(json.dumps(a, indent=1))  # same values, other bytes
    assert cli.main(["diff", str(pa), str(pb)]) == 11
    assert "test_cases[0].top_10[0].logit" in capsys.readouterr().out


def test_deep_json_is_an_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, "a.json", make_reference())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert cli.main(["diff", str(good), str(deep)]) == compare.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("refgen: error:") and "deep.json" in err and "nested" in err
    # deep enough to overflow a recursive walk, shallow enough for the JSON parser
    medium = make_reference()
    medium["extra"] = json.loads("[" * 900 + "]" * 900)
    assert cli.main(["diff", str(good), str(_write(tmp_path, "m.json", medium))]) == 2
    assert "nested more than" in capsys.readouterr().err


def test_deep_json_through_the_cli(tmp_path: Path) -> None:
    good = _write(tmp_path, "a.json", make_reference())
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    own_tmp = {"TMPDIR": str(tmp_path)}  # what other processes leave in /tmp is not ours
    result = run_refgen("diff", good, deep, hf_home=tmp_path, env=own_tmp, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("refgen: error:") and "Traceback" not in result.stderr


def test_long_prompts_are_shortened_in_reports() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    a["test_cases"][0]["prompt"] = "x" * 1_000_000
    b["test_cases"][0]["prompt"] = "y" * 1_000_000
    result = run(a, b)
    assert result.verdict is Verdict.NOT_REPRODUCED
    longest = max(len(line) for line in result.render().splitlines())
    assert longest < 300 and "(1000000 characters)" in result.render()
    assert compare.shorten("short") == "'short'"


def test_results_are_frozen_and_json_is_deterministic() -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["test_cases"][0]["top_10"][0]["logit"] += 1e-3
    first, second = run(a, b), run(copy.deepcopy(a), copy.deepcopy(b))
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.verdict = Verdict.IDENTICAL  # type: ignore[misc]
    one = json.dumps(first.to_json(), sort_keys=True)
    assert one == json.dumps(second.to_json(), sort_keys=True)
    data = json.loads(one)
    assert data["verdict"] == "NOT_REPRODUCED"
    assert data["exit_code"] == 11
    assert data["differences"][0]["path"] == "test_cases[0].top_10[0].logit"


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_bytes(dump(doc))
    return path


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_reference()
    b = copy.deepcopy(a)
    b["test_cases"][1]["top_10"][3]["logit"] += 1e-7
    c = copy.deepcopy(a)
    c["test_cases"][1]["top_10"][2], c["test_cases"][1]["top_10"][5] = (
        c["test_cases"][1]["top_10"][5],
        c["test_cases"][1]["top_10"][2],
    )
    pa, pb, pc = (
        _write(tmp_path, "a.json", a),
        _write(tmp_path, "b.json", b),
        _write(tmp_path, "c.json", c),
    )

    assert cli.main(["diff", str(pa), str(pa)]) == 0
    assert capsys.readouterr().out.startswith("REPRODUCED BIT FOR BIT")
    assert cli.main(["diff", str(pa), str(pb)]) == 10
    assert capsys.readouterr().out.startswith("REPRODUCED WITHIN TOLERANCE")
    assert cli.main(["diff", str(pa), str(pc), "--json"]) == 11
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "NOT_REPRODUCED"
    assert report["differences"][0]["kind"] == "swap"
    assert report["differences"][0]["path"] == "test_cases[1].top_10[2]"
    # a tighter flag turns the 1e-7 change into a failure
    assert cli.main(["diff", str(pa), str(pb), "--atol", "1e-9", "--rtol", "0"]) == 11
    capsys.readouterr()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "a.json", make_reference())
    assert cli.main(["diff", str(good), str(tmp_path / "missing.json")]) == compare.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("refgen: error: ") and "missing.json" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["diff", str(good), str(bad)]) == compare.EXIT_ERROR
    assert "not valid JSON" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    assert cli.main(["diff", str(good), str(other)]) == compare.EXIT_ERROR
    assert "not a reference" in capsys.readouterr().err


def test_tolerance_from_spec(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(
        'schema = 1\n[reference]\nname = "t"\noutput = "t.json"\n'
        '[model]\nrepo = "a/b"\nrevision = "' + "0" * 40 + '"\n'
        '[run]\nprompts = ["x"]\n[verify]\ntolerance = 1e-4\n'
    )
    assert compare.tolerance_from_spec(spec, None, None) == Tolerance(1e-4, 1e-4)
    assert compare.tolerance_from_spec(spec, 1e-8, None) == Tolerance(1e-8, 1e-4)
    assert compare.tolerance_from_spec(None, None, None) == Tolerance(1e-6, 1e-6)


# --- probe files beside the references: NaN, integer tensors, damaged headers -------------------


def _artifact(folder: Path, tensors: dict[str, Any]) -> Path:
    """A reference JSON and a probe file beside it holding *tensors* (numpy arrays)."""
    from safetensors.numpy import save_file

    from refgen import probes

    folder.mkdir()
    path = _write(folder, "x.json", make_reference())
    save_file(tensors, str(folder / "x.safetensors"), metadata={probes.METADATA_KEY: "{}"})
    return path


def test_identical_probe_files_with_nan_are_not_reproduced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    hidden = np.ones((3, 4), dtype=np.float32)
    hidden[1, 2] = np.nan
    a = _artifact(tmp_path / "a", {"prompt0.hidden_states.layer1": hidden})
    b = _artifact(tmp_path / "b", {"prompt0.hidden_states.layer1": hidden})
    assert (tmp_path / "a" / "x.safetensors").read_bytes() == (
        tmp_path / "b" / "x.safetensors"
    ).read_bytes()
    assert cli.main(["diff", str(a), str(b), "--json"]) == 11
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "NOT_REPRODUCED" and report["probes"]["identical"] is False
    (d,) = report["differences"]
    assert d["path"] == "prompt0.hidden_states.layer1[1, 2]"
    assert "NaN never counts as reproduced" in d["detail"]
    assert report["first_probe_difference"] == "first difference at layer 1 of prompt 0"
    # and NaN in both at an otherwise differing tensor is beyond tolerance too: 2 values
    other = hidden.copy()
    other[0, 0] = 2.0
    c = _artifact(tmp_path / "c", {"prompt0.hidden_states.layer1": other})
    result = compare.compare_files(a, c)
    assert result.verdict is Verdict.NOT_REPRODUCED
    assert "2 of 12 values of the tensor beyond it" in result.differences[0].detail


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_probe_tensors_get_a_verdict(tmp_path: Path, dtype: str) -> None:
    import numpy as np

    ids = np.array([[5, 9, 2, 7]]).astype(dtype)
    a = _artifact(tmp_path / "a", {"prompt0.input_ids": ids})
    same = compare.compare_files(a, _artifact(tmp_path / "b", {"prompt0.input_ids": ids.copy()}))
    assert same.verdict is Verdict.IDENTICAL
    changed = ids.copy()
    changed[0, 2] = 0 if dtype != "bool" else not changed[0, 2]
    result = compare.compare_files(a, _artifact(tmp_path / "c", {"prompt0.input_ids": changed}))
    assert result.verdict is Verdict.NOT_REPRODUCED
    (d,) = result.differences
    assert (d.path, d.kind) == ("prompt0.input_ids[0, 2]", "value")
    assert "compared exactly; 1 of 4 values of the tensor differ" in d.detail


def test_a_negative_shape_in_a_probe_header_is_a_finding(tmp_path: Path) -> None:
    import numpy as np

    a = _artifact(tmp_path / "a", {"prompt0.logits.last": np.zeros(4, np.float32)})
    b = _artifact(tmp_path / "b", {"prompt0.logits.last": np.zeros(4, np.float32)})
    path = tmp_path / "b" / "x.safetensors"
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["prompt0.logits.last"]["shape"] = [-2, -2]  # -2 x -2 = 4 values, the right size
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
    result = run_refgen("diff", a, b, hf_home=tmp_path, env={"TMPDIR": str(tmp_path)}, check=False)
    assert result.returncode == 11, result.stderr
    assert "Traceback" not in result.stderr
    assert "has a negative dimension: shape [-2, -2]" in result.stdout
