"""The emulator's event filter language: parse an expression, evaluate it against an event dict.

Pure: no I/O, no clock, no globals that change. The language (as the Events API documentation shows it)::

    expr       := or_expr
    or_expr    := and_expr ( "or" and_expr )*
    and_expr   := not_expr ( "and" not_expr )*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := path ( "==" | "!=" | "contains" ) value
    path       := name ( "." name )*          name: letters, digits, "_" (not starting with a digit)
    value      := 'single-quoted string' | number

Keywords (``and``, ``or``, ``not``, ``contains``) are case-insensitive. Inside a string a single quote
is written twice (``'O''Brien'``), SQL-style; a backslash is an ordinary character, so Windows paths
need no escaping (``FileName == 'C:\\Windows\\cmd.exe'`` is written with single backslashes).

Semantics:

- A dotted path walks into nested objects; a step through a list applies to every element, and the
  comparison matches if any reached value matches (``Ioa.Rules.Techniques contains 'T1059'``).
- ``==`` compares strings exactly (case-sensitive) and numbers numerically; a string never equals a
  number. When the value reached is a list, ``==`` matches if any element equals.
- ``contains``: on a string, substring; on a list, membership.
- ``!=`` is exactly ``not ==``: a missing field compares unequal, so ``Missing != 'x'`` is true.

Syntax errors raise :class:`FilterSyntaxError` whose message names the column (1-based).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, FrozenSet, List, Optional, Tuple, Union

__all__ = ["Filter", "FilterSyntaxError", "compile_filter"]

Value = Union[str, int, float]
Predicate = Callable[[Any], bool]


class FilterSyntaxError(ValueError):
    """A filter that does not parse. ``column`` is 1-based; ``str()`` includes it."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} at column {column}")
        self.reason = message
        self.column = column


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "string", "number", "op", "lparen", "rparen", "and", "or", "not", "end"
    text: str
    column: int
    value: Any = None


_KEYWORDS = {"and", "or", "not", "contains"}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of filter"
    return f"token {token.text!r}"


def _tokenize(text: str) -> List[_Token]:
    tokens: List[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        col = i + 1
        if ch.isspace():
            i += 1
            continue
        if ch == "(":
            tokens.append(_Token("lparen", ch, col))
            i += 1
        elif ch == ")":
            tokens.append(_Token("rparen", ch, col))
            i += 1
        elif text.startswith("==", i) or text.startswith("!=", i):
            tokens.append(_Token("op", text[i : i + 2], col))
            i += 2
        elif ch == "'":
            j = i + 1
            parts: List[str] = []
            while True:
                k = text.find("'", j)
                if k < 0:
                    raise FilterSyntaxError("unterminated string", col)
                parts.append(text[j:k])
                if text.startswith("''", k):
                    parts.append("'")
                    j = k + 2
                    continue
                j = k + 1
                break
            tokens.append(_Token("string", text[i:j], col, "".join(parts)))
            i = j
        elif ch in _DIGITS or (ch in "-." and i + 1 < n and text[i + 1] in _DIGITS + "."):
            m = _NUMBER_RE.match(text, i)
            if not m:
                raise FilterSyntaxError(f"malformed number {ch!r}", col)
            raw = m.group(0)
            end = m.end()
            if end < n and (text[end] in _NAME_START or text[end] in _DIGITS + "."):
                raise FilterSyntaxError(f"malformed number {text[i : end + 1]!r}", col)
            number: Value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(_Token("number", raw, col, number))
            i = end
        elif ch in _NAME_START:
            m = _NAME_RE.match(text, i)
            assert m is not None
            word = m.group(0)
            end = m.end()
            if end < n and text[end] == ".":
                raise FilterSyntaxError("a field path cannot end with '.'", end + 1)
            lowered = word.lower()
            if lowered in _KEYWORDS:
                kind = "op" if lowered == "contains" else lowered
                tokens.append(_Token(kind, lowered if kind == "op" else word, col))
            else:
                tokens.append(_Token("name", word, col, tuple(word.split("."))))
            i = end
        else:
            if ch in "=!<>":
                raise FilterSyntaxError(f"unknown operator {ch!r} (use ==, != or contains)", col)
            raise FilterSyntaxError(f"unexpected character {ch!r}", col)
    tokens.append(_Token("end", "", n + 1))
    return tokens


# -- evaluation -----------------------------------------------------------------------------------


def _resolve(event: Any, path: Tuple[str, ...]) -> List[Any]:
    """Every value reached by ``path``; lists met on the way fan out to their elements."""
    current = [event]
    for step in path:
        found: List[Any] = []
        for item in current:
            _collect(item, step, found)
        if not found:
            return found
        current = found
    return current


def _collect(item: Any, step: str, out: List[Any]) -> None:
    if isinstance(item, dict):
        if step in item:
            out.append(item[step])
    elif isinstance(item, list):
        for element in item:
            _collect(element, step, out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(candidate: Any, value: Value) -> bool:
    if isinstance(value, str):
        return isinstance(candidate, str) and candidate == value
    return _is_number(candidate) and candidate == value


def _matches_eq(candidate: Any, value: Value) -> bool:
    if isinstance(candidate, list):
        return any(_equal(element, value) for element in candidate)
    return _equal(candidate, value)


def _matches_contains(candidate: Any, value: Value) -> bool:
    if isinstance(candidate, str):
        return isinstance(value, str) and value in candidate
    if isinstance(candidate, list):
        return any(_equal(element, value) for element in candidate)
    return False


def _comparison(path: Tuple[str, ...], op: str, value: Value) -> Predicate:
    if op == "contains":

        def contains(event: Any) -> bool:
            return any(_matches_contains(c, value) for c in _resolve(event, path))

        return contains

    def equals(event: Any) -> bool:
        return any(_matches_eq(c, value) for c in _resolve(event, path))

    if op == "==":
        return equals
    return lambda event: not equals(event)


# -- parsing --------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: List[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.fields: set = set()

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Predicate:
        if self.peek().kind == "end":
            raise FilterSyntaxError("empty filter", 1)
        predicate = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            raise FilterSyntaxError(f"unexpected {_describe(token)}", token.column)
        return predicate

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.peek().kind == "or":
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda event: any(p(event) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.peek().kind == "and":
            self.take()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda event: all(p(event) for p in parts)

    def not_expr(self) -> Predicate:
        token = self.peek()
        if token.kind == "not":
            self.take()
            inner = self.not_expr()
            return lambda event: not inner(event)
        if token.kind == "lparen":
            self.take()
            if self.peek().kind == "rparen":
                raise FilterSyntaxError("empty parentheses", self.peek().column)
            inner = self.or_expr()
            closing = self.peek()
            if closing.kind != "rparen":
                raise FilterSyntaxError(
                    f"expected ')' to close '(' from column {token.column}, found {_describe(closing)}",
                    closing.column,
                )
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field = self.take()
        if field.kind != "name":
            raise FilterSyntaxError(f"expected a field name, found {_describe(field)}", field.column)
        op = self.take()
        if op.kind != "op":
            raise FilterSyntaxError(
                f"expected ==, != or contains after {field.text!r}, found {_describe(op)}", op.column
            )
        value = self.take()
        if value.kind not in ("string", "number"):
            hint = " (quote strings with ')" if value.kind == "name" else ""
            raise FilterSyntaxError(
                f"expected a quoted string or a number after {op.text!r}, found {_describe(value)}{hint}",
                value.column,
            )
        self.fields.add(field.value)
        return _comparison(field.value, op.text, value.value)


@dataclass(frozen=True)
class Filter:
    """A compiled filter: call :meth:`matches` with an event dict."""

    text: str
    predicate: Predicate
    fields: FrozenSet[Tuple[str, ...]]

    def matches(self, event: Any) -> bool:
        return bool(self.predicate(event))

    def uses_field(self, name: str) -> bool:
        """Whether any path in the filter starts with ``name``."""
        return any(path[0] == name for path in self.fields)


def compile_filter(text: Optional[str]) -> Optional[Filter]:
    """Compile ``text``; ``None`` or blank text means "no filter" and gives ``None``.

    Raises :class:`FilterSyntaxError` for a malformed filter.
    """
    if text is None or not text.strip():
        return None
    parser = _Parser(_tokenize(text))
    predicate = parser.parse()
    return Filter(text=text, predicate=predicate, fields=frozenset(parser.fields))
