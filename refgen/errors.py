"""Every error class of refgen under one root, so the CLI can turn every expected failure into a
clear message, and the one table of exit codes."""

import enum


class ExitCode(enum.IntEnum):
    """Every exit status of the ``refgen`` command, in one place: ``--help`` and the README list
    each with its :attr:`meaning`."""

    OK = 0
    USAGE = 2
    INTEGRITY = 3
    UNSUPPORTED_CPU = 4
    NON_FINITE = 5
    WITHIN_TOLERANCE = 10
    NOT_REPRODUCED = 11
    NOT_COMPARABLE = 12
    DIVERGED = 13
    HANGUP = 129
    INTERRUPTED = 130
    QUIT = 131
    TERMINATED = 143

    @property
    def meaning(self) -> str:
        """One line for ``--help`` and the README."""
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success; verify/diff: reproduced bit for bit; compare: the port is within "
    "tolerance",
    ExitCode.USAGE: "bad input or could not run (the message names the thing and the fix)",
    ExitCode.INTEGRITY: "a model file does not match its lock",
    ExitCode.UNSUPPORTED_CPU: "the CPU lacks an instruction set the determinism profile needs",
    ExitCode.NON_FINITE: "a weight or a layer's output is NaN or infinite: no reference can be "
    "made of it",
    ExitCode.WITHIN_TOLERANCE: "verify/diff: reproduced within tolerance",
    ExitCode.NOT_REPRODUCED: "verify/diff: not reproduced",
    ExitCode.NOT_COMPARABLE: "verify: this CPU cannot run the determinism profile, so no "
    "rebuild here can judge",
    ExitCode.DIVERGED: "compare: the port departs from the reference beyond tolerance",
    ExitCode.HANGUP: "interrupted by SIGHUP (no output was changed)",
    ExitCode.INTERRUPTED: "interrupted by SIGINT / Ctrl-C (no output was changed)",
    ExitCode.QUIT: "interrupted by SIGQUIT (no output was changed)",
    ExitCode.TERMINATED: "interrupted by SIGTERM (no output was changed)",
}


class NotRegularFileError(OSError):
    """The path is (or a link leads to) a FIFO, a device, a socket or a folder
    (:mod:`refgen.jsonio`'s bounded reader; an OSError, so its callers name the file)."""


class TooLargeError(OSError):
    """The file is larger than the reader's limit (:mod:`refgen.jsonio`)."""


class RefgenError(Exception):
    """Base class: a failure whose message tells the user what went wrong and how to fix it."""

    exit_code: ExitCode = ExitCode.USAGE


class SpecError(RefgenError):
    """The reference spec (TOML) is missing, malformed or inconsistent."""


class LockError(RefgenError):
    """The model lock (the committed file hashes of a spec) is missing or malformed."""


class ModelNotFoundError(RefgenError):
    """The pinned model revision, or one of its files, is not in the local Hugging Face cache."""


class IntegrityError(RefgenError):
    """A model file's content does not match the hash committed in the lock."""

    exit_code = ExitCode.INTEGRITY


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

    exit_code = ExitCode.UNSUPPORTED_CPU


class VerifyError(ArtifactError):
    """Verification could not run (the artifact to verify does not exist)."""


class ProvenanceError(RefgenError):
    """The manifest lacks something the provenance needs, or SOURCE_DATE_EPOCH is malformed."""


class ProbeFileError(RefgenError):
    """A probe file is not a readable safetensors file."""


class NonFiniteError(RefgenError):
    """A weight, or a layer's output, holds NaN or an infinity: no reference can be made of it."""

    exit_code = ExitCode.NON_FINITE


class StreamingError(RefgenError):
    """The model cannot be streamed (a transformers checkpoint conversion the streamed loader
    cannot apply, a tensor of another shape than the model's, no list of layers)."""


class CompareError(RefgenError):
    """A file to compare is missing, unreadable or not a reference."""
