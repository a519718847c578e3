"""One exception root, so the CLI can turn every expected failure into a clear message."""


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
