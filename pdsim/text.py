"""Wording shared by messages: counted nouns and long lists cut short."""

from __future__ import annotations

from collections.abc import Sequence


def plural(n: int, noun: str) -> str:
    """`n` and the noun, with an s unless there is exactly one ("1 tick", "3 ticks")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def listed(items: Sequence[str], shown: int = 4) -> str:
    """The first `shown` items, and how many more: a message stays one line whatever the list's length."""
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")
