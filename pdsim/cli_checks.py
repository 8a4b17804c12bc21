"""Range checks for numeric command-line options, as click callbacks.

click's FLOAT type accepts "nan" and "inf"; these reject them, and values outside a range, with a
one-line PdsimError naming the flag (exit code 2), before anything is read or written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import click

from pdsim.errors import PdsimError


def number_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
              what: str = "a number") -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A callback accepting None or a finite number with low <= x <= high (low < x with low_open)."""

    def check(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is None:
            return None
        flag = param.opts[0] if param.opts else param.name
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if isinstance(value, float) and not math.isfinite(value) or too_low or too_high:
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if low_open else '>='} {low:g}")
            if high is not None:
                bounds.append(f"<= {high:g}")
            raise PdsimError(f"{flag}: expected {what} {' and '.join(bounds)}, got {value}")
        return value

    return check


# An SLO (ms) is a positive time; past 1e9 ms (11 days) it is no SLO but a typo.
slo_ms = number_in(0, 1e9, low_open=True, what="a time (ms)")


def split_items(text: str, option: str) -> list[str]:
    """The comma-separated items of an option's value; an empty one (two commas, or one at an end) is refused,
    not dropped: "1,,2" may have lost a value."""
    items = [x.strip() for x in text.split(",")]
    if text.strip() and not all(items):
        raise PdsimError(f"{option}: an empty item in {text!r} (two commas in a row, or one at an end); expected "
                         "comma-separated values")
    return [x for x in items if x]


def vllm_int(text: str) -> int | str:
    """vLLM's command-line integers ('2048', '25.6k' = 25,600, '4G' = 4 x 2^30: engine/arg_utils.py,
    human_readable_int); the text unchanged when it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)", text.strip())
    if m is None:
        return text
    number, suffix = m.groups()
    if not suffix:
        return int(number) if number.isdigit() else text
    if suffix.islower():
        return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
    return int(number) * 1024 ** ("KMGT".index(suffix) + 1) if number.isdigit() else text


def vllm_int_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback: a whole number >= 1 in vLLM's command-line form ('4G', '25.6k', '2048')."""
    if value is None:
        return None
    number = vllm_int(value)
    if not isinstance(number, int) or number < 1:
        flag = param.opts[0] if param.opts else param.name
        raise PdsimError(f"{flag}: expected a whole number >= 1, as vLLM writes it (e.g. 2048, 25.6k, 4G), "
                         f"got {value!r}")
    return number


class OutputFile(click.ParamType):
    """A click type for an output file's path. A name ending in a separator, '.' or '..' means a folder,
    which `Path` would silently turn into a file of that name ('out/' and 'out/.' -> 'out'): refused here."""

    name = "path"

    def convert(self, value: str | Path, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if isinstance(value, Path):
            return value
        text = str(value)
        flag = _flag(param) if param is not None else "output"
        if not text:
            raise PdsimError(f"{flag}: expected the name of a file, got ''")
        if os.path.basename(text) in ("", ".", ".."):  # 'out/', 'out/.', 'out/..'
            raise PdsimError(f"{flag} {text!r}: names a folder; give the name of a file (in that folder or "
                             "elsewhere)")
        if text == "-":  # a file named '-' (and '-_summary.json' beside it) where stdout was meant
            raise PdsimError(f"{flag} -: pdsim writes its outputs to files, not to stdout; give "
                             "the name of a file")
        return Path(text)


class OutputFolder(click.ParamType):
    """A click type for an output folder's path: '' would silently write into the working folder."""

    name = "folder"

    def convert(self, value: str | Path, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if isinstance(value, Path):
            return value
        flag = _flag(param) if param is not None else "output"
        if not str(value):
            raise PdsimError(f"{flag}: expected the name of a folder, got ''")
        if str(value) == "-":  # a folder named '-' where stdout was meant
            raise PdsimError(f"{flag} -: pdsim writes its outputs to files in a folder, not to stdout; give the "
                             "name of a folder")
        return Path(str(value))


def _flag(param: click.Parameter) -> str:
    return param.opts[0] if param.opts else str(param.name)


def given_options(ctx: click.Context, *names: str) -> list[str]:
    """The options among `names` (parameter names) that the user gave, as their flags. By source, not value:
    an option spelled out at its default counts as given (it was meant to matter), one left out does not."""
    params = {p.name: p for p in ctx.command.params}
    return [_flag(params[name]) for name in names
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]


def unused_options(ctx: click.Context, *names: str) -> list[str]:
    """Of `names`, options that do not apply to this command line, given at another value than their
    default: the caller refuses them (the user meant them to matter). One given at its default (a script
    that always passes it) changes nothing either way: a note on stderr says it is ignored."""
    params = {p.name: p for p in ctx.command.params}
    changed = []
    for name in names:
        if ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT:
            continue
        param, value = params[name], ctx.params.get(name)
        try:
            default = param.type_cast_value(ctx, param.get_default(ctx))
        except (click.BadParameter, TypeError, ValueError):
            default = object()  # a default that cannot be compared: treat the option as changed
        if value == default:
            click.echo(f"note: {_flag(param)} {value}: given at its default value, which does not apply here; ignored",
                       err=True)
        else:
            changed.append(_flag(param))
    return changed


def existing_folder(path: Path | None, option: str) -> None:
    """An input folder option (e.g. --profiles-root) must name a folder: a typo would otherwise fall back on
    estimates without a word."""
    if path is not None and not path.is_dir():
        raise PdsimError(f"{option} {path}: " + ("no such folder" if not path.exists() else "not a folder"))
