"""The project's errors: one module, two roots.

`DataError` means the bytes or settings we were given are wrong (fix the
input); `TransportError` means we could not reach or write something (retry
or fix the environment). Leaves are named for what went wrong and their
messages say what was expected and what arrived. Every class carries the exit
code the CLI uses for it, so scripts can tell failures apart.
"""
from __future__ import annotations


class OtaError(Exception):
    """Root of every error this project raises on purpose."""

    exit_code = 1


# --- bad data ---------------------------------------------------------------
class DataError(OtaError):
    exit_code = 3


class ConfigError(DataError):
    """A configuration value is missing or out of range."""

    exit_code = 4


class ModelFormatError(DataError):
    """A device model file is corrupt, truncated, hostile or unsupported."""

    exit_code = 5


class ContentHashMismatchError(ModelFormatError):
    """Decoded tensors do not hash to the value the file (or a diff) promised."""


class AudioError(DataError):
    """An audio file is missing or unreadable."""

    exit_code = 6


class ManifestError(DataError):
    """A data manifest line is malformed or points at unusable data."""

    exit_code = 7


class DiffError(DataError):
    """A diff does not fit the model it is applied to, or is malformed."""

    exit_code = 8


class DecodeBoundError(DataError):
    """Decoding passed its bounds (symbols per utterance, the WER gate's time budget):
    the model is refused like one that failed the gate."""

    exit_code = 12


class BundleError(DataError):
    """An update bundle is corrupt, truncated, hostile or unsupported."""

    exit_code = 9


class TrustError(DataError):
    """Update metadata failed verification (signatures, versions, expiry)."""

    exit_code = 10


class MetadataExpiredError(TrustError):
    """The newest metadata the store offers has expired: nobody re-signed it in time."""


# --- transport / environment ------------------------------------------------
class TransportError(OtaError):
    exit_code = 20


class StoreUnreachableError(TransportError):
    exit_code = 21


class StoreAuthError(TransportError):
    exit_code = 22


class StoreNotFoundError(TransportError):
    """A bucket or object the caller expected is absent."""

    exit_code = 23


class StoreConflictError(TransportError):
    """Another writer changed the store first (a lost publish race)."""

    exit_code = 24


class DiskFullError(TransportError):
    exit_code = 25


# --- device agent (added with device_agent/agent) ---------------------------
class LifecycleError(DataError):
    """An update step was asked for out of order (e.g. activation before validation)."""

    exit_code = 11


class AgentBusyError(TransportError):
    """Another agent process holds the data directory's lock."""

    exit_code = 26


# --- server-side training ---------------------------------------------------
class DistributedTrainingError(TransportError):
    """A data-parallel job cannot go on: a rank stopped, or ranks reached different results."""

    exit_code = 27
