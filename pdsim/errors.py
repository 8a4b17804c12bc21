"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path


class PdsimError(Exception):
    """An error caused by the user's input (a config, a trace, a profile, an option).

    The message must name the file, the line or field, and what was expected.
    """


class ConfigError(PdsimError):
    pass


class TraceError(PdsimError):
    pass


class ProfileError(PdsimError):
    pass


class PrecisionMismatch(ProfileError):
    """A profile measured at another weight precision than the instance runs (fp8 against unquantised)."""


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key)
    return obj


class _DuplicateKey(ValueError):
    pass


def decode_text(data: bytes, where: str, error: type[PdsimError] = PdsimError) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is allowed); anything else is an error naming `where`."""
    if data[:64].count(0) == len(data[:64]) > 0:
        raise error(f"{where}: not text (it starts with NUL bytes); expected a UTF-8 text file")
    # UTF-16 text of ASCII has a NUL in every other byte; NULs elsewhere are binary data.
    nuls = [i for i, byte in enumerate(data[:64]) if byte == 0]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            nuls and len(nuls) >= len(data[:64]) // 3 and len({i % 2 for i in nuls}) == 1):
        raise error(f"{where}: not UTF-8 (looks like UTF-16); save the file as UTF-8")
    if nuls:
        raise error(f"{where}: not text (a NUL byte at offset {nuls[0]}: binary data?); expected a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def optional_object(obj: dict, key: str, where: str, error: type[PdsimError] = PdsimError) -> dict:
    """obj[key] where a JSON file must give an object there (absent or null: an empty one); `where` names the
    file and the path to `key` in it."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise error(f"{where}: expected an object, got {json_shown(value)}")
    return value


def json_shown(value: object, limit: int = 60) -> str:
    """A value read from JSON as the file writes it (null, true, "x"), cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words: for "expected a JSON object, got ..."."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {list: "a list", str: "a string", dict: "an object"}.get(type(value), "a number")


def csv_error_detail(error: Exception) -> str:
    """The first line of a CSV reader's error, without pandas' own prefix, to put in a one-line message."""
    return str(error).strip().splitlines()[0].removeprefix("Error tokenizing data. C error: ")


def csv_row_lines(path: Path) -> list[int] | None:
    """The file line (1-based) of each data row pandas reads from a CSV: it skips blank lines (spaces and
    tabs only too), before the header as well, so row + 2 is off after one. None for a file compressed
    in a way not followed here. (A quoted cell spanning lines is not followed either: such tables are
    not what pdsim reads.)"""
    opener = _csv_opener(path)
    if opener is None:
        return None
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        lines = [number for number, text in enumerate(f, start=1) if text.strip(" \t\r\n")]
    return lines[1:]  # the first line that is not blank is the header


def csv_header(path: Path) -> list[str] | None:
    """A CSV's column names as written (pandas renames a repeated one "X.1"); None as for csv_row_lines."""
    opener = _csv_opener(path)
    if opener is None:
        return None
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):  # as pandas reads it here
            if any(cell.strip(" \t") for cell in row):
                return [cell.strip() for cell in row]
    return []


@contextlib.contextmanager
def _open_zip_member(path: Path, mode: str, **text_options: str) -> Iterator[io.TextIOWrapper]:
    """The one file of a ZIP archive as text, as pandas reads a zipped CSV (it refuses an archive of several)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        with archive.open(names[0] if names else "") as member:
            yield io.TextIOWrapper(member, **text_options)


# The compressions pandas infers from a file's suffix, and the openers of those followed here.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tar")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zip": _open_zip_member}


def _csv_opener(path: Path) -> Callable[..., contextlib.AbstractContextManager[io.TextIOBase]] | None:
    """How pandas opens the file, by its suffix; None for a compression not followed here."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSED_SUFFIXES and suffix not in _OPENERS:
        return None
    return _OPENERS.get(suffix, open)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str | bytes, where: str, error: type[PdsimError] = PdsimError) -> object:
    """JSON with the checks json.loads leaves out: a key repeated in one object (json.loads keeps the
    last silently), nesting too deep for the parser, numbers too long to convert."""
    if isinstance(text, bytes):
        text = decode_text(text, where, error)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        if _SURROGATE_ESCAPE.search(text):  # a pair makes one character; a lone half is no text
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except UnicodeEncodeError as e:
        raise error(f"{where}: not valid JSON text (a lone UTF-16 surrogate escape, \\u{ord(e.object[e.start]):04x}, "
                    "encodes no character)") from None
    except json.JSONDecodeError as e:
        # One line of a JSONL file is named file:line already: add only the column (file:line:column).
        one_line = e.lineno == 1 and where.rpartition(":")[2].isdigit()
        at = f"{where}:{e.colno}" if one_line else f"{where}:{e.lineno}:{e.colno}"
        raise error(f"{at}: not valid JSON ({e.msg})") from None
    except _DuplicateKey as e:
        raise error(f"{where}: key {e.args[0]!r} appears twice in one object; give it once") from None
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise error(f"{where}: not valid JSON ({e})") from None


def read_json_object(path: Path, error: type[PdsimError] = PdsimError, what: str | None = None) -> dict:
    """A JSON file holding one object; `error` names the file (and line:column) when it does not,
    and `what` the kind of file (e.g. "cluster config") when it is missing or unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what or 'file'} not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read{' ' + what if what else ''} ({e.strerror})") from None
    try:
        raw = parse_json(data, str(path), error)
    except PdsimError as e:
        if what and _json_lines(data):  # e.g. a trace given where a cluster config goes
            raise error(f"{e}: the file holds one JSON object per line, as a trace does; a {what} is a "
                        "single JSON object") from None
        raise
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object")
    return raw


def _json_lines(data: bytes) -> bool:
    """Whether the file's first two lines that are not blank each hold a JSON object (JSON Lines)."""
    lines = [line for line in data.split(b"\n", 100)[:100] if line.strip()][:2]  # the head: a trace may be long
    try:
        return len(lines) == 2 and all(isinstance(json.loads(line), dict) for line in lines)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
