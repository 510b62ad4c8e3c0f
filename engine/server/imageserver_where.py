"""The ImageServer ``where`` clause: a safe SQL subset, parsed here (never evaluated as code)
and evaluated with pyarrow.compute."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.server.imageserver_common import ArcGISError, _bad

# -- the where clause -----------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<str>'(?:[^']|'')*')
      | (?P<qid>"[^"]+")
      | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op><=|>=|<>|!=|=|<|>)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "BETWEEN", "TIMESTAMP", "DATE"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, str, id, kw, op, punct, end
    value: Any
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise _bad(
                "Invalid where clause",
                f"unexpected character {bad!r} at position {n - len(text[pos:].lstrip())}",
            )
        kind = m.lastgroup or ""
        raw = m.group(kind)
        start = m.start(kind)
        if kind == "num":
            toks.append(_Tok("num", float(raw) if re.search(r"[.eE]", raw) else int(raw), start))
        elif kind == "str":
            toks.append(_Tok("str", raw[1:-1].replace("''", "'"), start))
        elif kind == "qid":
            toks.append(_Tok("id", raw[1:-1], start))
        elif kind == "id":
            up = raw.upper()
            toks.append(_Tok("kw", up, start) if up in _KEYWORDS else _Tok("id", raw, start))
        else:
            toks.append(_Tok(kind, raw, start))
        pos = m.end()
    toks.append(_Tok("end", None, n))
    return toks


# Expression tree nodes are plain tuples:
#   ("col", name) ("lit", value) ("cmp", op, a, b) ("in", a, [lits], negated)
#   ("like", a, pattern, negated) ("null", a, negated) ("between", a, lo, hi, negated)
#   ("and", a, b) ("or", a, b) ("not", a)
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        if tok.kind == kind and (value is None or tok.value == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None, what: str = "") -> _Tok:
        tok = self.peek()
        if tok.kind == kind and (value is None or tok.value == value):
            return self.take()
        raise self.error(f"expected {what or value or kind}")

    def error(self, problem: str) -> ArcGISError:
        tok = self.peek()
        shown = "end of clause" if tok.kind == "end" else repr(tok.value)
        return _bad("Invalid where clause", f"{problem} at position {tok.pos} (found {shown})")

    def parse(self) -> Node:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.error("unexpected token")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("kw", "OR"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.accept("kw", "AND"):
            node = ("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.accept("kw", "NOT"):
            return ("not", self.not_())
        return self.predicate()

    def predicate(self) -> Node:
        if self.peek().kind == "punct" and self.peek().value == "(":
            # a parenthesised boolean expression
            self.take()
            node = self.or_()
            self.expect("punct", ")")
            return node
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            op = "<>" if tok.value == "!=" else tok.value
            return ("cmp", op, left, self.operand())
        negated = self.accept("kw", "NOT")
        if self.accept("kw", "IN"):
            self.expect("punct", "(")
            values = [self.literal()]
            while self.accept("punct", ","):
                values.append(self.literal())
            self.expect("punct", ")")
            return ("in", left, values, negated)
        if self.accept("kw", "LIKE"):
            pat = self.expect("str", what="a quoted pattern")
            return ("like", left, pat.value, negated)
        if self.accept("kw", "BETWEEN"):
            lo = self.literal()
            self.expect("kw", "AND")
            return ("between", left, lo, self.literal(), negated)
        if not negated and self.accept("kw", "IS"):
            neg = self.accept("kw", "NOT")
            self.expect("kw", "NULL")
            return ("null", left, neg)
        raise self.error("expected a comparison, IN, LIKE, BETWEEN or IS [NOT] NULL")

    def operand(self) -> Node:
        tok = self.peek()
        if tok.kind == "id":
            self.take()
            if self.peek().kind == "punct" and self.peek().value == "(":
                raise _bad(
                    "Invalid where clause",
                    f"functions are not supported ({tok.value}( at position {tok.pos})",
                )
            return ("col", tok.value)
        return ("lit", self.literal())

    def literal(self) -> Any:
        tok = self.peek()
        if tok.kind in ("num", "str"):
            self.take()
            return tok.value
        if tok.kind == "kw" and tok.value in ("TIMESTAMP", "DATE"):
            self.take()
            text = self.expect("str", what="a quoted date").value
            return _parse_time(text)
        raise self.error("expected a number or a quoted string")


def _parse_time(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _bad(
            "Invalid where clause", f"{text!r} is not a date (YYYY-MM-DD HH:MM:SS)"
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_where(text: str) -> Node | None:
    """Parse a where clause into an expression tree (None for an empty clause).

    >>> parse_where("Name = 'a' AND cloud_cover < 10")[0]
    'and'
    """
    if text is None or text.strip() == "":
        return None
    return _Parser(text).parse()


def _columns_of(node: Node) -> list[str]:
    kind = node[0]
    if kind == "col":
        return [node[1]]
    if kind == "lit":
        return []
    if kind == "cmp":
        return _columns_of(node[2]) + _columns_of(node[3])
    if kind in ("in", "like", "null", "between", "not"):
        return _columns_of(node[1])
    return _columns_of(node[1]) + _columns_of(node[2])


def _resolve(name: str, columns: list[str]) -> str:
    if name in columns:
        return name
    lower = {c.lower(): c for c in columns}
    if name.lower() in lower:
        return lower[name.lower()]
    raise _bad(f"Invalid field: '{name}'", f"'{name}' is not a field of this service")


def _lit_for(value: Any, typ: pa.DataType, column: str) -> pa.Scalar:
    try:
        if pa.types.is_timestamp(typ):
            if isinstance(value, str):
                value = _parse_time(value)
            elif isinstance(value, (int, float)):
                value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=float(value))
            return pa.scalar(value, type=pa.timestamp("us", tz="UTC")).cast(typ)
        if pa.types.is_boolean(typ) and isinstance(value, (int, float)):
            return pa.scalar(bool(value))
        if isinstance(value, datetime):
            raise TypeError
        if (pa.types.is_integer(typ) or pa.types.is_floating(typ)) and isinstance(value, str):
            raise TypeError
        if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) and not isinstance(
            value, str
        ):
            raise TypeError
        if pa.types.is_integer(typ) and isinstance(value, float) and not value.is_integer():
            return pa.scalar(value, type=pa.float64())
        return pa.scalar(value).cast(typ)
    except (TypeError, ValueError, pa.ArrowException):
        raise _bad(
            "Invalid where clause", f"cannot compare field '{column}' ({typ}) with {value!r}"
        ) from None


_CMP: dict[str, Callable[..., Any]] = {
    "=": pc.equal,
    "<>": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_FLIP = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _evaluate(node: Node, table: pa.Table) -> pa.Array:
    """A boolean array (nulls meaning unknown, as in SQL)."""
    n = table.num_rows
    kind = node[0]
    try:
        if kind == "and":
            return pc.and_kleene(_evaluate(node[1], table), _evaluate(node[2], table))
        if kind == "or":
            return pc.or_kleene(_evaluate(node[1], table), _evaluate(node[2], table))
        if kind == "not":
            return pc.invert(_evaluate(node[1], table))
        if kind == "cmp":
            op, a, b = node[1], node[2], node[3]
            if a[0] == "lit" and b[0] == "col":
                op, a, b = _FLIP[op], b, a
            if a[0] == "lit" and b[0] == "lit":
                la, lb = a[1], b[1]
                if isinstance(la, str) != isinstance(lb, str):
                    raise _bad("Invalid where clause", f"cannot compare {la!r} with {lb!r}")
                value = _CMP[op](pa.scalar(la), pa.scalar(lb)).as_py()
                return pa.array([value] * n, type=pa.bool_())
            col = table[a[1]]
            if b[0] == "lit":
                return _CMP[op](col, _lit_for(b[1], col.type, a[1]))
            return _CMP[op](col, table[b[1]])
        col = table[node[1][1]] if node[1][0] == "col" else None
        if col is None:
            raise _bad("Invalid where clause", f"{kind.upper()} needs a field on its left")
        name = node[1][1]
        if kind == "null":
            out = pc.is_null(col)
            return pc.invert(out) if node[2] else out
        if kind == "in":
            values = pa.array([_lit_for(v, col.type, name).as_py() for v in node[2]], col.type)
            out = pc.is_in(col, value_set=values)
            out = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), out)
            return pc.invert(out) if node[3] else out
        if kind == "like":
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                raise _bad("Invalid where clause", f"LIKE needs a text field, not '{name}'")
            out = pc.match_like(col, node[2])
            return pc.invert(out) if node[3] else out
        if kind == "between":
            lo, hi = _lit_for(node[2], col.type, name), _lit_for(node[3], col.type, name)
            out = pc.and_kleene(pc.greater_equal(col, lo), pc.less_equal(col, hi))
            return pc.invert(out) if node[4] else out
    except pa.ArrowNotImplementedError as exc:
        raise _bad("Invalid where clause", f"unsupported comparison: {exc}") from None
    except pa.ArrowInvalid as exc:
        raise _bad("Invalid where clause", str(exc)) from None
    raise _bad("Invalid where clause", f"unsupported expression {kind}")


def _where_mask(text: str, table: pa.Table) -> pa.Array | None:
    tree = parse_where(text)
    if tree is None:
        return None
    for name in _columns_of(tree):
        _resolve(name, table.column_names)

    def fix(node: Node) -> Node:  # column names as the catalog spells them
        if node[0] == "col":
            return ("col", _resolve(node[1], table.column_names))
        return tuple(fix(x) if isinstance(x, tuple) else x for x in node)

    out = _evaluate(fix(tree), table)
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    return pc.fill_null(out, False)
