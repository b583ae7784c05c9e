"""Target conditions: which devices a deployment is for, in IoT Hub's style.

    tags.site = 'plant-1' AND tags.gpu = true
    tags.ring IN ['canary', 'beta'] OR NOT IS_DEFINED(tags.ring)
    properties.reported.memoryMb >= 2048

Conditions arrive inside documents from the network, so they are tokenised and parsed by hand
into a small tree (never `eval`), once, and the tree is evaluated against many devices. Matching
never raises: a path the device lacks, or a comparison between values of different types, is
simply false, so one odd device cannot stop an agent from evaluating the rest. The grammar is in
docs/manifest.md.

A condition is also bounded before it costs anything: at most `MAX_CONDITION_LENGTH` characters
(checked before tokenising) and `MAX_CONDITION_DEPTH` nested `NOT`s and parentheses (checked as
the parser descends), so `NOT NOT NOT ...` or `((((...))))` is a `ConditionSyntaxError`, never a
`RecursionError` in the parser or, later, in `matches`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from modules.deployment._errors import ConditionSyntaxError

MAX_CONDITION_LENGTH = 4096
"""Characters in one target condition; real ones are a line or two."""
MAX_CONDITION_DEPTH = 32
"""Nested `NOT`s and parentheses; each costs a few stack frames in the parser and in `matches`."""

_MISSING = object()
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "is_defined"}
_COMPARISONS = {"=", "!=", "<>", "<", "<=", ">", ">="}
_PATH_ROOTS = ("tags", "properties.reported", "properties.desired")

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$-]*(?:\.[A-Za-z0-9_$-]+)*)
  | (?P<op><>|!=|<=|>=|[=<>])
  | (?P<punct>[()\[\],*])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string | number | name | keyword | op | punct | end
    text: str
    value: Any
    column: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] == "'":
                raise ConditionSyntaxError("unterminated string", text, position + 1)
            raise ConditionSyntaxError(f"unexpected character {text[position]!r}", text, position + 1)
        kind = match.lastgroup
        raw = match.group()
        column = position + 1
        position = match.end()
        if kind == "space":
            continue
        if kind == "string":
            tokens.append(_Token("string", raw, raw[1:-1].replace("''", "'"), column))
        elif kind == "number":
            number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(_Token("number", raw, number, column))
        elif kind == "name" and raw.lower() in _KEYWORDS:
            tokens.append(_Token("keyword", raw, raw.lower(), column))
        else:
            assert kind is not None
            tokens.append(_Token(kind, raw, raw, column))
    tokens.append(_Token("end", "", None, len(text) + 1))
    return tokens


class _Node(Protocol):
    def evaluate(self, twin: Mapping[str, Any]) -> bool: ...


@dataclass(frozen=True)
class _Path:
    parts: tuple[str, ...]

    def resolve(self, twin: Mapping[str, Any]) -> Any:
        current: Any = twin
        for part in self.parts:
            if not isinstance(current, Mapping) or part not in current:
                return _MISSING
            current = current[part]
        return current


@dataclass(frozen=True)
class _Literal:
    value: Any

    def resolve(self, twin: Mapping[str, Any]) -> Any:
        return self.value


_Operand = _Path | _Literal


def _kind(value: Any) -> str | None:
    """The comparison class of a value; values of different classes never compare true."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None  # objects, arrays, missing: nothing compares equal or ordered to them


def _equal(left: Any, right: Any) -> bool | None:
    """True/False when comparable, None on a type mismatch."""
    kind = _kind(left)
    if kind is None or kind != _kind(right):
        return None
    return bool(left == right)


@dataclass(frozen=True)
class _Compare:
    left: _Operand
    op: str
    right: _Operand

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        left, right = self.left.resolve(twin), self.right.resolve(twin)
        if self.op in ("=", "!=", "<>"):
            equal = _equal(left, right)
            if equal is None:
                return False
            return equal if self.op == "=" else not equal
        kind = _kind(left)
        if kind not in ("number", "string") or kind != _kind(right):
            return False
        if self.op == "<":
            return bool(left < right)
        if self.op == "<=":
            return bool(left <= right)
        if self.op == ">":
            return bool(left > right)
        return bool(left >= right)


@dataclass(frozen=True)
class _In:
    operand: _Operand
    choices: tuple[Any, ...]
    negated: bool

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        value = self.operand.resolve(twin)
        if _kind(value) is None:
            return False
        found = any(_equal(value, choice) for choice in self.choices)
        return not found if self.negated else found


@dataclass(frozen=True)
class _IsDefined:
    path: _Path

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        return self.path.resolve(twin) is not _MISSING


@dataclass(frozen=True)
class _Not:
    operand: _Node

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        return not self.operand.evaluate(twin)


@dataclass(frozen=True)
class _And:
    operands: tuple[_Node, ...]

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        return all(operand.evaluate(twin) for operand in self.operands)


@dataclass(frozen=True)
class _Or:
    operands: tuple[_Node, ...]

    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        return any(operand.evaluate(twin) for operand in self.operands)


@dataclass(frozen=True)
class _Everything:
    def evaluate(self, twin: Mapping[str, Any]) -> bool:
        return True


class _Parser:
    """Recursive descent, one method per grammar rule, lowest precedence first."""

    def __init__(self, text: str) -> None:
        if len(text) > MAX_CONDITION_LENGTH:
            raise ConditionSyntaxError(
                f"condition of {len(text)} characters is longer than the limit of {MAX_CONDITION_LENGTH}",
                text,
                MAX_CONDITION_LENGTH + 1,
            )
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def descend(self) -> None:
        """Enter one NOT or parenthesis; refused past the limit, at the token that went too deep."""
        self.depth += 1
        if self.depth > MAX_CONDITION_DEPTH:
            raise ConditionSyntaxError(
                f"NOT and parentheses nested deeper than {MAX_CONDITION_DEPTH} levels",
                self.text,
                self.current.column,
            )

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def error(self, message: str, token: _Token | None = None) -> ConditionSyntaxError:
        token = token or self.current
        found = "end of condition" if token.kind == "end" else repr(token.text)
        return ConditionSyntaxError(f"{message}, found {found}", self.text, token.column)

    def advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def at_keyword(self, word: str) -> bool:
        return self.current.kind == "keyword" and self.current.value == word

    def at_punct(self, char: str) -> bool:
        return self.current.kind == "punct" and self.current.text == char

    def expect_punct(self, char: str) -> None:
        if not self.at_punct(char):
            raise self.error(f"expected {char!r}")
        self.advance()

    def parse(self) -> _Node:
        if self.current.kind == "end":
            raise self.error("empty condition; use '*' to target every device")
        if self.at_punct("*"):
            self.advance()
            node: _Node = _Everything()
        else:
            node = self.or_expr()
        if self.current.kind != "end":
            raise self.error("expected AND, OR or the end of the condition")
        return node

    def or_expr(self) -> _Node:
        operands = [self.and_expr()]
        while self.at_keyword("or"):
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else _Or(tuple(operands))

    def and_expr(self) -> _Node:
        operands = [self.not_expr()]
        while self.at_keyword("and"):
            self.advance()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else _And(tuple(operands))

    def not_expr(self) -> _Node:
        if self.at_keyword("not"):
            self.descend()
            self.advance()
            node: _Node = _Not(self.not_expr())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> _Node:
        if self.at_punct("("):
            self.descend()
            self.advance()
            node = self.or_expr()
            self.expect_punct(")")
            self.depth -= 1
            return node
        if self.at_keyword("is_defined"):
            self.advance()
            self.expect_punct("(")
            if self.current.kind != "name":
                raise self.error("expected a path such as tags.site")
            path = self.path(self.advance())
            self.expect_punct(")")
            return _IsDefined(path)
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.operand()
        if self.at_keyword("not") or self.at_keyword("in"):
            negated = self.at_keyword("not")
            if negated:
                self.advance()
                if not self.at_keyword("in"):
                    raise self.error("expected IN after NOT")
            self.advance()
            return _In(left, self.literal_list(), negated)
        if self.current.kind != "op":
            raise self.error("expected a comparison (=, !=, <>, <, <=, >, >=) or IN")
        op = self.advance().text
        return _Compare(left, op, self.operand())

    def literal_list(self) -> tuple[Any, ...]:
        self.expect_punct("[")
        values = [self.literal()]
        while self.at_punct(","):
            self.advance()
            values.append(self.literal())
        self.expect_punct("]")
        return tuple(values)

    def operand(self) -> _Operand:
        if self.current.kind == "name":
            return self.path(self.advance())
        return _Literal(self.literal())

    def literal(self) -> Any:
        token = self.current
        if token.kind in ("string", "number"):
            self.advance()
            return token.value
        if token.kind == "keyword" and token.value in ("true", "false", "null"):
            self.advance()
            return {"true": True, "false": False, "null": None}[token.value]
        raise self.error("expected a value: 'text', a number, true, false or null")

    def path(self, token: _Token) -> _Path:
        text = token.text
        if text == "deviceId":
            return _Path(("deviceId",))
        for root in _PATH_ROOTS:
            if text.startswith(root + ".") and len(text) > len(root) + 1:
                return _Path(tuple(text.split(".")))
        raise ConditionSyntaxError(
            f"unknown path {text!r}: paths start with deviceId, tags., properties.reported. "
            "or properties.desired.",
            self.text,
            token.column,
        )


@dataclass(frozen=True)
class Condition:
    """A parsed target condition; `matches` is cheap and never raises."""

    text: str
    _root: _Node

    def matches(self, twin: Mapping[str, Any]) -> bool:
        """`twin` is twin-shaped: {"deviceId", "tags", "properties": {"reported", "desired"}}."""
        return self._root.evaluate(twin)


@lru_cache(maxsize=512)
def parse_condition(text: str) -> Condition:
    """Parse once; the same text from many documents shares one compiled condition."""
    return Condition(text, _Parser(text).parse())
