"""The one check of files against a model lock."""

from __future__ import annotations

import hashlib
from pathlib import Path

from refgen.lock import FileMismatch, LockCheck, LockedFile, check, check_folder


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_check_sorts_every_file_into_one_bucket() -> None:
    expected = [
        LockedFile("same", _sha(b"a"), 1),
        LockedFile("other-bytes", _sha(b"b"), 1),
        LockedFile("other-size", _sha(b"c"), 2),
        LockedFile("no-size-recorded", _sha(b"d"), None),
        LockedFile("gone", _sha(b"e"), 1),
    ]
    actual = {
        "same": (_sha(b"a"), 1),
        "other-bytes": (_sha(b"B"), 1),
        "other-size": (_sha(b"c"), 1),
        "no-size-recorded": (_sha(b"d"), 1),
        "unlocked": (_sha(b"f"), 1),
    }
    assert check(expected, actual) == LockCheck(
        matched=("same", "no-size-recorded"),
        mismatched=(
            FileMismatch("other-bytes", _sha(b"b"), _sha(b"B"), 1, 1),
            FileMismatch("other-size", _sha(b"c"), _sha(b"c"), 2, 1),
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
