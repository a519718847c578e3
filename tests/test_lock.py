"""The one check of files against a model lock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import blake3
import pytest

from refgen.lock import FileMismatch, LockCheck, LockedFile, check, check_folder


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_check_sorts_every_file_into_one_bucket() -> None:
    expected = [
        LockedFile("same", _sha(b"a"), 1),
        LockedFile("other-bytes", _sha(b"b"), 1),
        LockedFile("other-size", _sha(b"c"), 2),
        LockedFile("no-size-recorded", _sha(b"d"), None),
        LockedFile("gone", _sha(b"e"), 1),
    ]
    actual = {
        "same": ({"sha256": _sha(b"a")}, 1),
        "other-bytes": ({"sha256": _sha(b"B")}, 1),
        "other-size": ({"sha256": _sha(b"c")}, 1),
        "no-size-recorded": ({"sha256": _sha(b"d")}, 1),
        "unlocked": ({"sha256": _sha(b"f")}, 1),
    }
    assert check(expected, actual) == LockCheck(
        matched=("same", "no-size-recorded"),
        mismatched=(
            FileMismatch("other-bytes", "sha256", _sha(b"b"), _sha(b"B"), 1, 1),
            FileMismatch("other-size", "sha256", _sha(b"c"), _sha(b"c"), 2, 1),
        ),
        missing=("gone",),
        extra=("unlocked",),
    )
    assert not check(expected, actual).ok
    assert check(expected[:1], actual).ok  # extra files alone are not a failure


def test_check_folder_hashes_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"weights")
    (tmp_path / "README.md").write_text("not locked")
    result = check_folder(
        [LockedFile("sub/w.bin", _sha(b"weights"), 7), LockedFile("config.json", "0" * 64, 2)],
        tmp_path,
        progress=False,
    )
    assert result == LockCheck(("sub/w.bin",), (), ("config.json",), ("README.md",))


def test_check_compares_every_digest_measured() -> None:
    both = LockedFile("w", _sha(b"w"), 1, _b3(b"w"))
    sha_only = LockedFile("c", _sha(b"c"), 1)
    assert check([both], {"w": ({"blake3": _b3(b"w")}, 1)}).ok
    assert check([both], {"w": ({"sha256": _sha(b"w"), "blake3": _b3(b"w")}, 1)}).ok
    assert check([both], {"w": ({"blake3": _b3(b"W")}, 1)}).mismatched == (
        FileMismatch("w", "blake3", _b3(b"w"), _b3(b"W"), 1, 1),
    )
    # A BLAKE3 the lock does not have is a mismatch, never a pass.
    assert check([sha_only], {"c": ({"blake3": _b3(b"c")}, 1)}).mismatched == (
        FileMismatch("c", "blake3", None, _b3(b"c"), 1, 1),
    )
    with pytest.raises(ValueError, match="no digest"):
        check([sha_only], {"c": ({}, 1)})


@pytest.mark.parametrize("wrong", ["sha256", "blake3"])
def test_check_folder_checks_both_digests_of_an_entry(tmp_path: Path, wrong: str) -> None:
    """A lock whose SHA-256 names the file but whose BLAKE3 names other bytes (or the reverse)
    fails wherever a whole file is checked: the pair is bound to the same bytes."""
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    digests = {"sha256": _sha(b"weights"), "blake3": _b3(b"weights")}
    digests[wrong] = {"sha256": _sha, "blake3": _b3}[wrong](b"other weights")
    entry = LockedFile("w.safetensors", digests["sha256"], 7, digests["blake3"])
    result = check_folder([entry], tmp_path, progress=False)
    assert [(m.path, m.algorithm, m.actual_digest) for m in result.mismatched] == [
        ("w.safetensors", wrong, {"sha256": _sha, "blake3": _b3}[wrong](b"weights"))
    ]
    assert f"expected {wrong} {digests[wrong]} (7 bytes)" in result.mismatched[0].describe()


def test_an_entry_is_written_with_blake3_only_when_it_has_one() -> None:
    assert LockedFile("a", "0" * 64, 1).as_dict() == {"path": "a", "sha256": "0" * 64, "size": 1}
    entry = LockedFile("a", "0" * 64, None, "1" * 64)
    assert LockedFile.from_dict(entry.as_dict()) == entry
    assert entry.verified_with == ("sha256", "blake3")  # a small file: both, microseconds
    weights = LockedFile("w.safetensors", "0" * 64, None, "1" * 64)
    assert weights.verified_with == ("blake3",)
    assert LockedFile("w.safetensors", "0" * 64, 1).verified_with == ("sha256",)
