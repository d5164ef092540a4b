"""The one table of `ota` exit codes (docs/cli.md shows it; tests/test_cli_faults.py keeps the two
equal and tests/test_cli_exit_codes.py runs a command for each code).

Library errors map by class (the nearest listed ancestor wins), so scripts
can tell a missing file from a corrupt one from an unreachable store.
Operating-system errors become library errors first (device_agent.errors.os_error).
"""
from __future__ import annotations

from device_agent import errors as e

OK = 0
INTERNAL = 1  # a bug: an exception the project did not raise on purpose
USAGE = 2  # click: unknown option, missing argument, bad value
INTERRUPTED = 130  # Ctrl-C, or a stop request that reached the command

FILE_NOT_FOUND = 30
IS_A_DIRECTORY = 31  # a directory where a file is expected, or a file where a folder is
PERMISSION_DENIED = 32
OTHER_OS_ERROR = 33
MISSING_DEPENDENCY = 34  # a server command on a device-only install

# Library error classes, most general first. Subclasses not listed inherit their parent's code.
ERROR_CODES: dict[type[e.OtaError], int] = {
    e.OtaError: INTERNAL,
    e.DataError: 3,
    e.ConfigError: 4,
    e.ModelFormatError: 5,
    e.AudioError: 6,
    e.ManifestError: 7,
    e.DiffError: 8,
    e.BundleError: 9,
    e.TrustError: 10,
    e.LifecycleError: 11,
    e.WrongBaseError: 13,
    e.UnreadableFormatError: 14,
    e.TransportError: 20,
    e.StoreUnreachableError: 21,
    e.StoreAuthError: 22,
    e.StoreNotFoundError: 23,
    e.StoreConflictError: 24,
    e.DiskFullError: 25,
    e.AgentBusyError: 26,
    e.DistributedTrainingError: 27,
    e.FileMissingError: FILE_NOT_FOUND,
    e.WrongPathKindError: IS_A_DIRECTORY,
    e.FilePermissionError: PERMISSION_DENIED,
    e.LocalFileError: OTHER_OS_ERROR,
    e.Stopped: INTERRUPTED,
}

MEANINGS: dict[int, str] = {
    OK: "success",
    INTERNAL: "unexpected internal error (a bug; OTA_DEBUG=1 shows the traceback)",
    USAGE: "usage error: unknown option, missing argument or bad option value",
    3: "bad input data (DataError)",
    4: "bad configuration value or option, including store URLs (ConfigError)",
    5: "corrupt, truncated or unsupported model file (ModelFormatError)",
    6: "missing or unreadable audio (AudioError)",
    7: "malformed manifest line (ManifestError)",
    8: "diff does not fit the model or is malformed (DiffError)",
    9: "corrupt or unsupported bundle (BundleError)",
    10: "update metadata failed verification (TrustError)",
    11: "update step out of order, e.g. nothing to roll back to (LifecycleError)",
    13: "a diff or diff bundle made for another base model (WrongBaseError)",
    14: "devices on the channel do not read the bundle's format; publish one they read (UnreadableFormatError)",
    20: "store or environment error (TransportError)",
    21: "store unreachable (StoreUnreachableError)",
    22: "store refused the credentials (StoreAuthError)",
    23: "bucket, repository or object not found in the store (StoreNotFoundError)",
    24: "another publisher changed the store first; re-run (StoreConflictError)",
    25: "disk full (DiskFullError)",
    26: "another agent holds the data directory (AgentBusyError)",
    27: "a data-parallel training job lost a rank (or ranks disagreed); rerun to resume (DistributedTrainingError)",
    FILE_NOT_FOUND: "file or folder not found (FileMissingError)",
    IS_A_DIRECTORY: "a directory where a file is expected, or a file where a folder is (WrongPathKindError)",
    PERMISSION_DENIED: "permission denied: unreadable input, unwritable output (FilePermissionError)",
    OTHER_OS_ERROR: "other operating-system error on a file (LocalFileError)",
    MISSING_DEPENDENCY: "the command needs packages this install lacks",
    INTERRUPTED: "interrupted: Ctrl-C, or the agent asked to stop (Stopped)",
}


def code_for_error(error: e.OtaError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]
    return INTERNAL
