"""The one strict parser for the JSON headers of `.otam` model files and
`.otab` update bundles (docs/model-format.md, docs/bundle-format.md).

Both formats promise one byte string per header: canonical JSON (sorted
keys, no whitespace, ASCII escapes), no duplicate keys, no NaN/Infinity, no
floats, integers within stated bounds, names and digests of fixed patterns.
Each codec passes its own error class, so a caller sees `ModelFormatError`
or `BundleError` with the same wording for the same defect.
"""
from __future__ import annotations

import json
import re
from typing import Any

from device_agent.device_model import canonical_json
from device_agent.errors import DataError

NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")  # model ids and tensor/section names
CONTENT_HASH = re.compile(r"[0-9a-f]{32}")  # xxh3-128 hex (DeviceModel.content_hash)
XXH64 = re.compile(r"[0-9a-f]{16}")  # section checksums
MAX_NAME_CHARS = 128


def is_int(value: Any, low: int, high: int) -> bool:
    """An integer (not a bool, not a float that happens to be whole) in [low, high]."""
    return type(value) is int and low <= value <= high


def parse_canonical_json(body: bytes, what: str, error: type[DataError], *, arrays: bool = True,
                         floats: bool = False) -> dict[str, Any]:
    """Bytes -> JSON object, or `error` naming the rule broken.

    Rejected: invalid UTF-8, duplicate keys, NaN/Infinity, (if not `floats`)
    numbers with a fraction or exponent, (if not `arrays`) lists, a top level that is not an object, and any encoding that is
    not byte-identical to `canonical_json` of the parsed value."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise error(f"{what} JSON repeats keys {sorted({k for k in keys if keys.count(k) > 1})[:8]}; "
                        "each key must appear once")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise error(f"{what} JSON contains {name}; only integers and strings are allowed")

    def no_float(text: str) -> Any:
        raise error(f"{what} JSON contains the number {text[:40]}; only integers are allowed")

    try:
        # The interpreter's recursion limit stops deep nesting long before memory matters;
        # ValueError covers JSONDecodeError and integers over 4300 digits.
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant,
                         parse_float=float if floats else no_float)
        canonical = canonical_json(obj)
    except DataError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise error(f"{what} is not valid UTF-8 JSON: {reason}") from None
    if not isinstance(obj, dict):
        raise error(f"{what} must be a JSON object, got {type(obj).__name__}")
    if not arrays and _has_list(obj):
        raise error(f"{what} JSON contains an array; only objects, integers and strings are allowed")
    if canonical != body:  # floats too: only their shortest round-trip form is canonical
        raise error(f"{what} is not canonical JSON (sorted keys, no spaces, ASCII escapes, shortest numbers); "
                    "re-encode it with the project's encoder")
    return obj


def _has_list(obj: Any) -> bool:
    if isinstance(obj, list):
        return True
    return isinstance(obj, dict) and any(_has_list(v) for v in obj.values())


def check_exact_keys(obj: Any, expected: set[str], what: str, error: type[DataError]) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != expected:
        got = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
        raise error(f"{what} keys {got} differ from the expected {sorted(expected)}")
    return obj


def check_int(value: Any, low: int, high: int, what: str, error: type[DataError]) -> int:
    if not is_int(value, low, high):
        raise error(f"{what} {value!r:.40} must be an integer in [{low}, {high}]")
    return value


def check_pattern(value: Any, pattern: re.Pattern[str], what: str, rule: str, error: type[DataError]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise error(f"{what} {value!r:.80} must be {rule}")
    return value


def check_name(value: Any, what: str, error: type[DataError]) -> str:
    return check_pattern(value, NAME, what, f"1-{MAX_NAME_CHARS} characters of [A-Za-z0-9_.-]", error)


def check_content_hash(value: Any, what: str, error: type[DataError]) -> str:
    return check_pattern(value, CONTENT_HASH, what, "32 lowercase hex digits (a model content hash)", error)


def check_xxh64(value: Any, what: str, error: type[DataError]) -> str:
    return check_pattern(value, XXH64, what, "16 lowercase hex digits", error)


def check_string_map(value: Any, max_entries: int, what: str, error: type[DataError]) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > max_entries or not all(
            isinstance(v, str) for v in value.values()):
        raise error(f"{what} must be an object of at most {max_entries} string values")
    return value
