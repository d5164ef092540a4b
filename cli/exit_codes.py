"""The one table of `ota` exit codes (docs/cli.md shows it; a test keeps the two equal).

Library errors map by class (the nearest listed ancestor wins), operating
system errors by kind, so scripts can tell a missing file from a corrupt
one from an unreachable store.
"""
from __future__ import annotations

import errno

from device_agent import errors as e

OK = 0
INTERNAL = 1  # a bug: an exception the project did not raise on purpose
USAGE = 2  # click: unknown option, missing argument, bad value
INTERRUPTED = 130  # Ctrl-C

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
    e.TransportError: 20,
    e.StoreUnreachableError: 21,
    e.StoreAuthError: 22,
    e.StoreNotFoundError: 23,
    e.StoreConflictError: 24,
    e.DiskFullError: 25,
    e.AgentBusyError: 26,
    e.DistributedTrainingError: 27,
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
    8: "diff does not fit the model, e.g. trained on another base (DiffError)",
    9: "corrupt or unsupported bundle (BundleError)",
    10: "update metadata failed verification (TrustError)",
    11: "update step out of order, e.g. nothing to roll back to (LifecycleError)",
    20: "store or environment error (TransportError)",
    21: "store unreachable",
    22: "store refused the credentials",
    23: "bucket, repository or object not found in the store",
    24: "another publisher changed the store first; re-run",
    25: "disk full",
    26: "another agent holds the data directory",
    27: "a data-parallel training job lost a rank (or ranks disagreed); rerun to resume",
    FILE_NOT_FOUND: "file or folder not found",
    IS_A_DIRECTORY: "a directory where a file is expected (or a file where a folder is)",
    PERMISSION_DENIED: "permission denied (unreadable input, unwritable output)",
    OTHER_OS_ERROR: "other operating-system error on a file",
    MISSING_DEPENDENCY: "the command needs packages this install lacks",
    INTERRUPTED: "interrupted (Ctrl-C)",
}


def code_for_error(error: e.OtaError) -> int:
    for cls in type(error).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]
    return INTERNAL


def code_for_os_error(error: OSError) -> int:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ERROR_CODES[e.DiskFullError]
    if isinstance(error, FileNotFoundError):
        return FILE_NOT_FOUND
    if isinstance(error, (IsADirectoryError, NotADirectoryError)):
        return IS_A_DIRECTORY
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
        return PERMISSION_DENIED
    return OTHER_OS_ERROR
