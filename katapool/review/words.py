"""Counts as the report and the annotated SGF write them."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """``1 visit``, ``2 visits``: "1 visits" in a comment reads as a misprint."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
