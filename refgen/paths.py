"""Where refgen may write, and which relative paths it accepts from the files it reads.

Rules (the README's "Where outputs may go"):

* A spec's ``reference.output`` is relative to the spec's folder and must stay inside the spec's
  **output root**: the project that holds the spec, i.e. the parent of a folder named ``specs``
  (``specs/x.toml`` may write ``../scripts/x.json``), else the spec's own folder. Absolute
  paths, escapes (``../../x.json``) and folders that do not exist are refused; a destination
  elsewhere is chosen explicitly with ``--output-dir``.
* No output file (the reference and its siblings) may be a symbolic link, a folder or any input
  of the run (the spec, a model lock, ``requirements.lock``, anything in the Hugging Face cache,
  anything in a local checkpoint's folder or any file its lock names: refgen.hub.run_inputs).
* Paths read from a lock or a manifest are relative POSIX paths without ``.``/``..`` or empty
  components; a manifest's outputs are plain file names in the artifact's folder.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from refgen.errors import OutputError, SpecError

SPECS_FOLDER = "specs"
LOCK_SUFFIX = ".lock.json"


def output_root(spec_path: Path) -> Path:
    """The folder a spec's outputs must stay in (see the module docstring)."""
    folder = spec_path.parent
    return folder.parent if folder.name == SPECS_FOLDER else folder


def relative_path_problem(path: str) -> str | None:
    """Why *path* is not a safe relative POSIX path (None when it is)."""
    if not path:
        return "is empty"
    if "\0" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash (use '/')"
    if path.startswith("/"):
        return "is absolute"
    parts = path.split("/")
    if "" in parts:
        return "has an empty component ('//' or a trailing '/')"
    if any(part in (".", "..") for part in parts):
        return "has a '.' or '..' component"
    return None


def plain_name_problem(name: str) -> str | None:
    """Why *name* is not a plain file name in the artifact's folder (None when it is)."""
    problem = relative_path_problem(name)
    if problem is None and "/" in name:
        problem = "is not a plain file name in the artifact's folder"
    return problem


# POSIX's portable filename character set: every file system and `sha256sum -c` (which reads
# one name per line) takes these names as they are.
_PORTABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*", re.ASCII)
OUTPUT_NAME_RULE = (
    "the portable characters A-Z a-z 0-9 . _ - (no spaces, control characters or line "
    "breaks), beginning with a letter, a digit or '_'"
)


def output_name_problem(name: str) -> str | None:
    """Why *name* cannot be an output's file name (None when it can): see OUTPUT_NAME_RULE."""
    if _PORTABLE.fullmatch(name):
        return None
    if not name:
        return "is empty"
    if name[0] in ".-":  # a hidden file (refgen's own temporaries begin with '.'), an option
        return f"begins with {name[0]!r}"
    bad = next(c for c in name if not _PORTABLE.fullmatch("a" + c))
    if bad in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029":  # what splits a line (str.splitlines)
        kind = "a line break"
    elif not bad.isprintable():
        kind = "a non-printing character"
    elif bad.isspace():
        kind = "a space"
    else:
        kind = "the character"
    return f"contains {kind} {bad!r} (U+{ord(bad):04X})"


def _shown(text: str) -> str:
    """*text* quoted for a message, at most 80 characters, escapes for what is not printable."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def spec_output(spec_path: Path, output: str) -> tuple[Path, str]:
    """Check a spec's ``reference.output``; return the destination and its path relative to the
    spec's folder (what the manifest records).

    The destination's folder is resolved (symlinks in it followed, then checked again); its last
    component never is, so a symlink there is refused by :func:`check_destinations`, not
    followed.
    """
    where = f"{spec_path.name}: 'reference.output'"
    hint = (
        "A spec writes only inside its project; to write elsewhere, keep it there and pass "
        "--output-dir DIR."
    )
    if output.startswith("/") or PurePosixPath(output).is_absolute() or output.startswith("~"):
        raise SpecError(f"{where} must be relative to the spec's folder, got {output!r}. {hint}")
    if "\0" in output or "\\" in output:
        raise SpecError(f"{where} must be a POSIX path, got {output!r}.")
    parts = output.split("/")
    if "" in parts or parts[-1] in (".", ".."):
        raise SpecError(f"{where} has an empty or '.'/'..' file name: {output!r}.")
    root = output_root(spec_path)
    lexical = Path(os.path.normpath(spec_path.parent / output))
    if not _inside(lexical.parent, root):
        raise SpecError(
            f"{where} = {output!r} leaves the spec's output root {root} (the project holding "
            f"the '{SPECS_FOLDER}' folder, else the spec's folder). {hint}"
        )
    folder = lexical.parent.resolve()
    if not _inside(folder, root.resolve()):
        raise SpecError(
            f"{where} = {output!r} leads through a symbolic link to {folder}, outside the spec's "
            f"output root {root}. {hint}"
        )
    name = lexical.name
    problem = output_name_problem(name)
    if problem is not None:
        raise SpecError(
            f"{where} = {_shown(output)}: the file name {problem}. An output name uses only "
            f"{OUTPUT_NAME_RULE}. Rename it."
        )
    if name.endswith(LOCK_SUFFIX):
        raise SpecError(
            f"{where} = {output!r} names a model lock ('*{LOCK_SUFFIX}'); an output may never "
            "overwrite an input. Choose another name."
        )
    relative = Path(os.path.relpath(lexical, spec_path.parent)).as_posix()
    return folder / name, relative


def check_destinations(
    targets: Iterable[Path],
    *,
    inputs: Iterable[Path],
    protected: Iterable[Path] = (),
    key: str = "reference.output",
    create: bool = False,
) -> None:
    """Refuse to write any of *targets* when it is a symlink or not a regular file, when it is
    one of *inputs* or lies under a *protected* folder, or when its folder is missing (created
    instead when *create*: an explicit ``--output-dir``)."""
    input_ids = {_identity(p) for p in inputs} - {None}
    input_paths = {Path(os.path.abspath(p)) for p in inputs}
    roots = [Path(os.path.abspath(p)).resolve() for p in protected]
    for target in targets:
        folder = target.parent
        # inputs' folders first, before a missing --output-dir is created: the model cache (its
        # files are links into blobs) and a local checkpoint's folder
        real = Path(os.path.abspath(folder)).resolve() / target.name
        for root in roots:
            if _inside(real, root):
                raise OutputError(
                    f"{target} lies in {root}, which holds inputs of this run (the model cache "
                    "or the checkpoint's folder); an output never goes there. Choose another "
                    "destination."
                )
        if not folder.is_dir():
            if folder.exists() or not create:
                raise OutputError(
                    f"the folder of {key} does not exist or is not a folder: {folder}. Create "
                    "it, or choose a destination with --output-dir."
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create {folder}: {exc.strerror}") from None
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise OutputError(
                f"{target} is a symbolic link; refgen never writes through one (from "
                f"{key}). Remove the link or choose another destination."
            )
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise OutputError(
                f"{target} exists and is not a regular file (from {key}). Remove it or choose "
                "another destination."
            )
        absolute = Path(os.path.abspath(target))
        if absolute in input_paths or (info is not None and _identity(target) in input_ids):
            raise OutputError(
                f"{target} is an input of this run (from {key}); an output never overwrites "
                "an input. Choose another output name."
            )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
