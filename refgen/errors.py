"""One exception root, so the CLI can turn every expected failure into a clear message, and the
one table of exit codes."""

import enum


class ExitCode(enum.IntEnum):
    """Every exit status of the ``refgen`` command, in one place (``--help`` and the README list
    them all)."""

    OK = 0
    """success; verify/diff: reproduced bit for bit; compare: the port is within tolerance"""
    USAGE = 2
    """bad input or could not run (the message names the thing and the fix)"""
    INTEGRITY = 3
    """a model file does not match its lock"""
    UNSUPPORTED_CPU = 4
    """the CPU lacks an instruction set the determinism profile needs"""
    NON_FINITE = 5
    """a weight or a layer's output is NaN or infinite: no reference can be made of it"""
    WITHIN_TOLERANCE = 10
    """verify/diff: reproduced within tolerance"""
    NOT_REPRODUCED = 11
    """verify/diff: not reproduced"""
    NOT_COMPARABLE = 12
    """verify: this CPU cannot run the determinism profile, so no rebuild here can judge"""
    DIVERGED = 13
    """compare: the port departs from the reference beyond tolerance"""
    HANGUP = 129
    """interrupted by SIGHUP (no output was changed)"""
    INTERRUPTED = 130
    """interrupted by SIGINT / Ctrl-C (no output was changed)"""
    QUIT = 131
    """interrupted by SIGQUIT (no output was changed)"""
    TERMINATED = 143
    """interrupted by SIGTERM (no output was changed)"""


class RefgenError(Exception):
    """Base class: a failure whose message tells the user what went wrong and how to fix it."""

    exit_code = 2


class SpecError(RefgenError):
    """The reference spec (TOML) is missing, malformed or inconsistent."""


class LockError(RefgenError):
    """The model lock (the committed file hashes of a spec) is missing or malformed."""


class ModelNotFoundError(RefgenError):
    """The pinned model revision, or one of its files, is not in the local Hugging Face cache."""


class IntegrityError(RefgenError):
    """A model file's content does not match the hash committed in the lock."""

    exit_code = 3


class EnvironmentProfileError(RefgenError):
    """The determinism profile could not be applied (e.g. torch was imported too early)."""


class HubError(RefgenError):
    """The Hugging Face Hub could not be reached, or refused a download (network commands only)."""


class OutputError(RefgenError):
    """An output cannot be written where asked: outside its allowed folder, over a symlink, a
    folder or an input, an unwritable folder (checked before the model is loaded), or the file
    system refused the write (the previous files are kept)."""


class ArtifactError(RefgenError):
    """A reference's files (the manifest next to the JSON) are missing or malformed."""


class CheckpointError(RefgenError):
    """The checkpoint cannot give a trustworthy reference: pickle weights, weights missing from the
    lock, or tensors that would be left unused or newly initialised."""


class UnsupportedCpuError(RefgenError):
    """The CPU lacks an instruction set the determinism profile needs (AVX2, FMA)."""

    exit_code = 4
