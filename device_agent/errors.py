"""The project's errors: one module, one hierarchy under `OtaError`, two roots.

`DataError` means the bytes or settings we were given are wrong (fix the
input); `TransportError` means we could not reach or write something (retry
or fix the environment). Leaves are named for what went wrong and their
messages say what was expected and what arrived. Operating-system errors
become project errors in one place, `os_error`. The CLI maps classes to exit
codes in one table (cli/exit_codes.py, shown in docs/cli.md).
"""
from __future__ import annotations

import errno


class OtaError(Exception):
    """Root of every error this project raises on purpose."""


class Stopped(OtaError):
    """The agent was asked to stop mid-step; not a failure: the step resumes on the next start."""


# --- bad data ---------------------------------------------------------------
class DataError(OtaError):
    """The bytes or settings given are wrong."""


class ConfigError(DataError):
    """A configuration value or argument is missing or out of range."""


class ModelFormatError(DataError):
    """A device model file is corrupt, truncated, hostile or unsupported."""


class ContentHashMismatchError(ModelFormatError):
    """Decoded tensors do not hash to the value the file (or a diff) promised."""


class TokenizerError(DataError):
    """A tokenizer description is malformed, or text has characters outside its alphabet."""


class SparseCodingError(DataError):
    """Sparse positions or values are malformed (the model or bundle reader names where)."""


class AudioError(DataError):
    """An audio file is missing or unreadable."""


class ManifestError(DataError):
    """A data manifest line is malformed or points at unusable data."""


class DiffError(DataError):
    """A diff does not fit the model it is applied to, or is malformed."""


class WrongBaseError(DiffError):
    """A diff (or diff bundle) was made for another base model than the one it is applied to."""


class DecodeBoundError(DataError):
    """Decoding passed its bounds (symbols per utterance, the WER gate's time budget):
    the model is refused like one that failed the gate."""


class BundleError(DataError):
    """An update bundle is corrupt, truncated, hostile or unsupported."""


class UnreadableFormatError(DataError):
    """A bundle is in a format that some devices' agents do not read (from their heartbeats):
    published, it would reach them only to be refused."""


class NoUpdatePathError(DataError):
    """No chain of published bundles leads from the device's version to the channel's."""


class TrustError(DataError):
    """Update metadata failed verification (signatures, versions, expiry)."""


class MetadataExpiredError(TrustError):
    """The newest metadata the store offers has expired: nobody re-signed it in time."""


class LifecycleError(DataError):
    """An update step was asked for out of order (e.g. activation before validation)."""


class TensorInputError(DataError):
    """A library function got tensors of the wrong shape, dtype, device or range (a caller's bug)."""


# --- transport / environment ------------------------------------------------
class TransportError(OtaError):
    """A store, a file or a process could not be reached, read or written."""


class StoreUnreachableError(TransportError):
    """The store did not answer (network, DNS, refused connection, timeouts)."""


class StoreAuthError(TransportError):
    """The store refused the credentials (or a file store's folder is not writable)."""


class StoreNotFoundError(TransportError):
    """A bucket or object the caller expected is absent."""


class StoreConflictError(TransportError):
    """Another writer changed the store first (a lost publish race)."""


class DiskFullError(TransportError):
    """No space left on the device or volume written to."""


class LocalFileError(TransportError):
    """A local file or folder cannot be used (an operating-system error not named below)."""


class FileMissingError(LocalFileError):
    """A local file or folder does not exist."""


class WrongPathKindError(LocalFileError):
    """A folder where a file is expected, or a file where a folder is."""


class FilePermissionError(LocalFileError):
    """No permission to read or write a path, or a read-only file system."""


class AgentBusyError(TransportError):
    """Another agent process holds the data directory's lock."""


class DistributedTrainingError(TransportError):
    """A data-parallel job cannot go on: a rank stopped, or ranks reached different results."""


# --- operating-system errors ------------------------------------------------
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def os_error(exc: OSError, what: str = "", *, missing: type[OtaError] = FileMissingError,
             denied: type[OtaError] = FilePermissionError) -> OtaError:
    """The project's error for an operating-system error, with a one-line message.

    `what` names the action and path ("writing /data/state.json"); without
    it the message names the file the OSError carries. `missing` and
    `denied` let a caller say what an absent or forbidden path means where
    it stands (a file store: an absent object, a refused bucket)."""
    name = what or (str(exc.filename) if exc.filename is not None else "operating-system error")
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _DISK_FULL:
        return DiskFullError(f"{name}: disk full, no space left on device; free space and retry")
    if isinstance(exc, FileNotFoundError):
        return missing(f"{name}: not found ({reason})")
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return WrongPathKindError(f"{name}: wrong kind of path ({reason}); expected a file where a file goes "
                                  "and a folder where a folder goes")
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return denied(f"{name}: permission denied ({reason})")
    return LocalFileError(f"{name}: cannot use it ({reason})")
