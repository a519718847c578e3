"""A reference's file set: names derived in one place, committed as one step."""

from __future__ import annotations

from pathlib import Path

import pytest

from refgen.artifact import SIBLINGS, Artifact


def test_sibling_names() -> None:
    art = Artifact(Path("out/x.json"))
    assert art.manifest.name == "x.manifest.json"
    assert art.statement.name == "x.intoto.json"
    assert art.sums.name == "x.sha256"
    assert list(art.paths()) == list(SIBLINGS)
    assert list(art.paths())[-1] == "sums"  # what `sha256sum -c` trusts is renamed in last
    assert Artifact.of_manifest(art.manifest) == art


def test_commit_writes_every_file_or_none(tmp_path: Path) -> None:
    art = Artifact(tmp_path / "x.json")
    with pytest.raises(ValueError, match="sums"):
        art.commit({"reference": b"{}", "manifest": b"{}", "statement": b"{}"})
    assert list(tmp_path.iterdir()) == []
    art.commit({kind: kind.encode() for kind in SIBLINGS})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        path.name: kind.encode() for kind, path in art.paths().items()
    }
