"""Permission cases, run as an unprivileged user (root ignores file modes): each is one
``refgen: error:`` line with exit code 2, before the model is loaded, and the old artifact stays."""

from __future__ import annotations

from conftest import SharedTiny, run_refgen_unprivileged
from test_atomic import assert_untouched, seed_old_artifact


def test_read_only_output_folder_is_named_before_the_model_loads(shared_tiny: SharedTiny) -> None:
    out = shared_tiny.root / "out"
    seed_old_artifact(out)
    out.chmod(0o555)
    setup = shared_tiny.setup
    result = run_refgen_unprivileged(
        "generate",
        "--spec",
        setup.spec,
        "--output-dir",
        out,
        hf_home=setup.hf_home,
        home=shared_tiny.home,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("refgen: error: cannot write to the output folder")
    assert str(out) in error and "--output-dir" in error
    assert "generating" not in result.stderr and "forward:" not in result.stderr
    assert_untouched(out)


def test_unreadable_spec_is_an_error(shared_tiny: SharedTiny) -> None:
    setup = shared_tiny.setup
    setup.spec.chmod(0o000)
    result = run_refgen_unprivileged(
        "generate", "--spec", setup.spec, hf_home=setup.hf_home, home=shared_tiny.home
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("refgen: error: cannot read the spec"), result.stderr
    assert str(setup.spec) in result.stderr and "Permission denied" in result.stderr
