"""Wording shared by messages: counted nouns and long lists cut short."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def plural(n: int, noun: str) -> str:
    """`n` and the noun, with an s unless there is exactly one ("1 tick", "3 ticks")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def listed(items: Sequence[str], shown: int = 4) -> str:
    """The first `shown` items, and how many more: a message stays one line whatever the list's length."""
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def did_you_mean(name: str, names: Sequence[str]) -> str:
    """' (did you mean 'X'?)' for the known name closest to `name` (the same but for case or blanks first:
    Hugging Face names differ in case only too often), else ''."""
    folded = {n.casefold(): n for n in names}
    key = name.strip().casefold()
    # A known name the given one extends by a suffix (a fine-tune's "-Instruct", a "-FP8" checkpoint) is nearer
    # than the closest spelling, which may be another model of the family ("Llama-3.1-8B-Instruct" is closer,
    # letter by letter, to "Llama-3.3-70B-Instruct" than to "Llama-3.1-8B").
    stems = [n for f, n in folded.items() if key.startswith(f) and key[len(f):len(f) + 1] in ("-", "_", ".", " ")]
    if key in folded:
        close = [folded[key]]
    elif stems:
        close = [max(stems, key=len)]
    else:
        close = difflib.get_close_matches(name.strip(), list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
