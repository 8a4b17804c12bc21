"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

import json
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


def read_json_object(path: Path, error: type[PdsimError] = PdsimError) -> dict:
    """A JSON file holding one object; `error` names the file (and line:column) when it does not."""
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object")
    return raw
