"""Diagnostics: one error type for every mistake in a spec, printed as `file:line:col: error: ...`.

A span points at the source text. `ArchError.render()` prints the location, the message, the
source line with a caret under the offending text, and an optional hint, in the style of
compilers people already know (rustc, clang).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

# Source texts by file name, so an error raised deep in elaboration can quote its line.
_SOURCES: dict[str, str] = {}


def register_source(file: str, text: str) -> None:
    _SOURCES[file] = text


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, the end is exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class ArchError(Exception):
    """A mistake in a spec (or in what the user asked for). Never a bug in archc."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None,
                 notes: Iterable[tuple[str, Span | None]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes = list(notes)

    def with_span(self, span: Span | None) -> "ArchError":
        """Attach a location to an error raised where none was known."""
        if self.span is None and span is not None:
            self.span = span
        return self

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        lines = [_located(self.span, "error", self.message)]
        lines += _excerpt(self.span)
        for text, span in self.notes:
            lines.append(_located(span, "note", text))
            lines += _excerpt(span)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


def _located(span: Span | None, kind: str, message: str) -> str:
    return f"{span}: {kind}: {message}" if span else f"archc: {kind}: {message}"


def _excerpt(span: Span | None) -> list[str]:
    if span is None or span.file not in _SOURCES:
        return []
    src_lines = _SOURCES[span.file].splitlines()
    if not 1 <= span.line <= len(src_lines):
        return []
    text = src_lines[span.line - 1].expandtabs(1)
    width = 1
    if span.end_line == span.line and span.end_col and span.end_col > span.col:
        width = span.end_col - span.col
    width = max(1, min(width, len(text) - span.col + 1))
    gutter = f"{span.line:>4} | "
    return [gutter + text, " " * (len(gutter) + span.col - 1) + "^" + "~" * (width - 1)]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
