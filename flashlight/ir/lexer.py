"""Tokens of the IR's text form: one line at a time (the parser, :mod:`flashlight.ir.parser`,
reads them)."""

from __future__ import annotations

import re
from dataclasses import dataclass


class ParseError(ValueError):
    """The text is not in the IR's syntax. ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: str  # name | int | float | combiner | op | end
    text: str
    column: int  # 1-based

    def describe(self) -> str:
        return "end of line" if self.kind == "end" else repr(self.text)


TOKEN_RE = re.compile(r"""
    (?P<space>[ ]+)
  | (?P<float>(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)
  | (?P<int>[0-9]+)
  | (?P<combiner>(?:max|min)=(?!=))
  | (?P<name>[^\W\d]\w*)
  | (?P<op>//|<=|>=|==|!=|\+=|\*=|->|[-+*/%<>&|~()\[\],:;=@])
""", re.VERBOSE)

def tokenize(text: str, line: int, offset: int = 0) -> list[Token]:
    """Tokens of one line; ``offset`` is the column (0-based) where ``text`` starts."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            what = "tab" if ch == "\t" else repr(ch)
            raise ParseError(line, offset + pos + 1, f"unexpected character {what}")
        if m.lastgroup != "space":
            tokens.append(Token(m.lastgroup, m.group(), offset + pos + 1))
        pos = m.end()
    tokens.append(Token("end", "", offset + len(text) + 1))
    return tokens
