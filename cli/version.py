"""`ota --version` without importing the project's libraries."""
from __future__ import annotations

from importlib import metadata


def version_message() -> str:
    try:
        version = metadata.version("ota-speech")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "unknown (not installed)"
    return f"ota-speech {version}"
