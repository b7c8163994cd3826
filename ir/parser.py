"""Text (.qir) -> IR, with the lark grammar in qir.lark.

Lark's LALR parser runs the transformer inline, which turns the text into plain
records (no IR yet); the builder then creates values and nodes, resolving `%names`
through nested graph scopes. Every error names the source, line and column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import lark
import numpy as np

from .attributes import Attr, AttrKind
from .core import Graph, Model, Node, Value, bulk_build
from .dtypes import DType
from .errors import ParseError
from .errorstats import ErrorStats
from .quant import QuantParams
from .tensors import ElidedTensor, SparseTensor, digest
from .types import MapType, OptionalType, SequenceType, SparseTensorType, TensorType, Type
from .weights import load_weights


def parse_model(
    text: str,
    *,
    source: str = "<text>",
    weights: Mapping[str, np.ndarray] | str | Path | None = None,
    base_dir: str | Path | None = None,
) -> Model:
    """Parse a .qir text into a Model.

    Elided constants (`blob(...)`) take their data from `weights` (a dict or an .npz
    path), else from the file named by a `weights "..."` line (relative to `base_dir`),
    else stay ElidedTensor: the model prints the same but cannot be exported.
    """
    with bulk_build():  # tokens, records, IR: many objects and no garbage; see bulk_build
        weights_file, model_record = _records(text, source)
        if weights is None and weights_file is not None:
            weights = Path(base_dir or ".") / weights_file
        if isinstance(weights, str | Path):
            weights = load_weights(weights)
        return _Builder(source, weights).model(model_record)


def _records(text: str, source: str) -> tuple[str | None, list]:
    """What the grammar's transformer makes of `text`; any error as a ParseError."""
    try:
        return _parser().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        raise ParseError(source, *_error_position(err), _describe(err)) from None
    except _TextError as err:
        raise ParseError(source, err.line, err.column, err.message) from None


def parse_file(path: str | Path, *, weights: Mapping[str, np.ndarray] | str | Path | None = None) -> Model:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ParseError(str(path), 1, 1, f"cannot read: {err}") from None
    return parse_model(text, source=str(path), weights=weights, base_dir=path.parent)


def _error_position(err: lark.exceptions.UnexpectedInput) -> tuple[int, int]:
    """Lark's line and column, except after a coarse token at the end of input.

    Lark places the end of input at the last token; the fine rules would have made the
    last token the coarse token's last part (its closing bracket, or the name's string).
    """
    if not isinstance(err, lark.exceptions.UnexpectedToken) or err.token.type != "$END":
        return err.line, err.column
    last = err.interactive_parser.lexer_thread.state.last_token
    if last is None or last.type not in _COARSE:
        return err.line, err.column
    return last.line, last.column + (last.index('"') if last.type == "NODE_NAME" else len(last) - 1)


def _describe(err: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(err, lark.exceptions.UnexpectedToken):
        found = "end of input" if err.token.type == "$END" else _COARSE.get(err.token.type, repr(str(err.token)))
        expected = sorted({_pretty_terminal(t) for t in err.expected})
        return f"unexpected {found}; expected one of: {', '.join(expected)}"
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        allowed = sorted({_pretty_terminal(t) for t in (err.allowed or ())})
        return f"unexpected character {err.char!r}" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
    return "unexpected end of input"


def _pretty_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    return f"'{name.lower()}'" if name.isalpha() else name


# Coarse terminals (see qir.lark) read as the token they start with, as their fine rule would.
_COARSE = {"SHAPE": "'['", "NUMBERS": "'['", "OPERANDS": "'('", "BLOB_ARGS": "'('", "NODE_NAME": "'name'"}
_TERMINAL_NAMES = {
    "VALUE": "%value", "GRAPH_NAME": "@graph", "NAME": "identifier", "STRING": "string",
    "INT": "integer", "FLOAT": "float", "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'",
    "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'",
    "LESSTHAN": "'<'", "MORETHAN": "'>'", "QMARK": "'?'", "DOT": "'.'", "__ANON_0": "'::'",
    "__ANON_1": "'name'", "__ANON_2": "'-inf'", "ERROR_FIGURE": "number", **_COARSE,
}


@cache
def _parser() -> lark.Lark:
    grammar = resources.files(__package__).joinpath("qir.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", lexer="contextual", transformer=_ToRecords(), maybe_placeholders=False)


class _TextError(Exception):
    def __init__(self, token: lark.Token, message: str) -> None:
        self.line, self.column, self.message = token.line, token.column, message


# -- records produced by the transformer ----------------------------------------------


@dataclass
class _Ref:
    name: str
    token: lark.Token


@dataclass
class _Decl:
    ref: _Ref
    type: Type | None = None
    quant: Any = None  # _QuantRecord
    observed: Any = None  # _RangeRecord
    meta: dict = field(default_factory=dict)
    error: ErrorStats | None = None


@dataclass
class _RangeRecord:
    bounds: list  # checked when the value is built, where its position is known


@dataclass
class _Dense:
    elements: list


@dataclass
class _Blob:
    key: str
    fields: dict[str, Any]
    token: lark.Token


@dataclass
class _Raw:
    hex: str


@dataclass
class _TensorLit:
    type: TensorType
    data: Any
    token: lark.Token | None = None


@dataclass
class _QuantRecord:
    dtype: DType
    fields: dict[str, Any]
    token: lark.Token


@dataclass
class _GraphRecord:
    name: str
    inputs: list[_Decl]
    statements: list
    outputs: list[_Ref]


@dataclass
class _NodeRecord:
    results: list[_Decl]
    domain: str
    op_type: str
    operands: list[_Ref | None]
    attributes: list[tuple[str, Any]] = field(default_factory=list)
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _TypeLit:
    type: Type


@dataclass
class _SparseLit:
    type: TensorType
    values: _TensorLit
    indices: _TensorLit


@dataclass
class _EmptyList:
    kind: AttrKind


def _unquote(token: str, at: lark.Token | None = None) -> str:
    """A quoted string's text; the lexer admits some escapes and characters JSON does not,
    which are errors at `at` (default: the token itself)."""
    try:
        return json.loads(token)
    except json.JSONDecodeError as err:
        raise _TextError(at if at is not None else token, f"bad string {str(token)[:40]!r}: {err.msg}") from None


def _name_of(token: lark.Token) -> str:
    body = token[1:]
    return _unquote(body, at=token) if body.startswith('"') else body


class _ToRecords(lark.Transformer):
    """Callbacks run by the LALR parser as it reduces; they only build records."""

    def start(self, children):
        return (children[0], children[1]) if len(children) == 2 else (None, children[0])

    def weights(self, children):
        return _unquote(children[0])

    def model(self, children):
        return children

    def model_scalar(self, children):
        key, value = children
        return ("scalar", key, _unquote(value) if value.type == "STRING" else int(value))

    def model_opsets(self, children):
        return ("opsets", dict(children))

    def opset(self, children):
        domain, version = children
        return (domain, int(version))

    def model_metadata(self, children):
        return ("metadata", dict(children))

    def meta_entry(self, children):
        return _unquote(children[0]), _unquote(children[1])

    def graph(self, children):
        name = _name_of(children[0])
        inputs = [c for c in children[1:] if isinstance(c, _Decl)]
        statements = [c for c in children[1 + len(inputs):-1]]
        return _GraphRecord(name, inputs, statements, children[-1])

    def const_stmt(self, children):
        ref, type_, *rest = children
        quant = rest[0] if len(rest) == 2 else None
        return ("const", _Decl(_ref(ref), type_, quant), rest[-1])

    def default_stmt(self, children):
        return ("default", _ref(children[0]), children[1])

    def node_stmt(self, children):
        results, (domain, op_type), operands, *tail = children
        parts = dict(tail)  # the optional parts, each tagged with its rule's name
        return _NodeRecord(results, domain, op_type, operands, parts.get("attributes", []),
                           parts.get("node_name", ""), parts.get("annotations", {}))

    def node_results(self, children):
        return children

    def return_stmt(self, children):
        return [_ref(c) for c in children]

    def value_decl(self, children):
        ref = _ref(children[0])
        meta = next((c[1] for c in children[1:] if isinstance(c, tuple) and c[0] == "annotations"), {})
        rest = [c for c in children[1:] if not isinstance(c, tuple)]
        type_ = next((c for c in rest if not isinstance(c, _QuantRecord | _RangeRecord | ErrorStats)), None)
        quant = next((c for c in rest if isinstance(c, _QuantRecord)), None)
        observed = next((c for c in rest if isinstance(c, _RangeRecord)), None)
        error = next((c for c in rest if isinstance(c, ErrorStats)), None)
        return _Decl(ref, type_, quant, observed, meta, error)

    def observed_range(self, children):
        return _RangeRecord(list(children[0]))

    def error_stats(self, children):
        """Fields are checked here, where their tokens are at hand; ErrorStats checks the figures."""
        keyword, *fields = children
        for index, (name, _) in enumerate(fields):
            if name not in _ERROR_FIELDS:
                raise _TextError(name, f"unknown error field {str(name)!r}; {_ERROR_ORDER}")
            if index >= len(_ERROR_FIELDS) or name != _ERROR_FIELDS[index]:
                raise _TextError(name, f"error field {str(name)!r} out of place; {_ERROR_ORDER}")
        if len(fields) < len(_ERROR_FIELDS):
            raise _TextError(keyword, f"err<...> lacks {', '.join(_ERROR_FIELDS[len(fields):])}; {_ERROR_ORDER}")
        try:
            return ErrorStats(*(_error_figure(name, figure) for name, figure in fields))
        except ValueError as err:
            raise _TextError(keyword, f"err<...>: {err}") from None

    def error_field(self, children):
        return children[0], children[1]

    def op(self, children):
        name = children[-1]
        op_type = _unquote(name) if name.type == "STRING" else str(name)
        return (children[0] if len(children) == 2 else "", op_type)

    def domain(self, children):
        if len(children) == 1 and children[0].type == "STRING":
            return _unquote(children[0])
        text = ".".join(children)
        return "" if text == "ai.onnx" else text

    def operands(self, children):
        return [None if c is None else _ref(c) for c in children]

    def flat_operands(self, children):
        token = children[0]
        return [_operand(token, m) for m in _OPERAND_ITEM.finditer(token)]

    def no_value(self, children):
        return None

    def node_name(self, children):
        return ("node_name", _unquote(children[0]))

    def flat_node_name(self, children):
        token = children[0]
        return ("node_name", _unquote(token[token.index('"'):], at=token))

    def annotations(self, children):
        return ("annotations", dict(children))

    def annotation(self, children):
        key, value = children
        return (_unquote(key) if key.type == "STRING" else str(key), value)

    def true(self, children):
        return True

    def false(self, children):
        return False

    def tensor_type(self, children):
        return TensorType(_dtype(children[0]), children[1] if len(children) == 2 else None)

    def shape(self, children):
        return tuple(_dim(c) for c in children)

    def flat_shape(self, children):
        return tuple(_dim_text(m.group()) for m in _DIM_ITEM.finditer(children[0]))

    def unknown_dim(self, children):
        return None

    def seq_type(self, children):
        return SequenceType(children[0])

    def opt_type(self, children):
        return OptionalType(children[0])

    def map_type(self, children):
        return MapType(_dtype(children[0]), children[1])

    def sparse_type(self, children):
        return SparseTensorType(children[0].dtype, children[0].shape)

    def quant(self, children):
        return _QuantRecord(_dtype(children[0]), dict(children[1:]), children[0])

    def quant_field(self, children):
        return (str(children[0]), children[1])

    def attributes(self, children):
        return ("attributes", children)

    def attribute(self, children):
        key, value = children
        return (_unquote(key) if key.type == "STRING" else str(key), value)

    def attr_list(self, children):
        return list(children)

    def attr_empty_list(self, children):
        try:
            kind = AttrKind[children[0].upper()]
        except KeyError:
            kind = None
        if kind is None or not kind.is_list:
            raise _TextError(children[0], f"{children[0]!r} is not an attribute list kind (ints, floats, ...)")
        return _EmptyList(kind)

    def int(self, children):
        return int(children[0])

    def float(self, children):
        return float(children[0])

    def inf(self, children):
        return math.inf

    def neg_inf(self, children):
        return -math.inf

    def nan(self, children):
        return math.nan

    def string(self, children):
        return _unquote(children[0])

    def sparse_literal(self, children):
        return _SparseLit(*children)

    def type_literal(self, children):
        return _TypeLit(children[0])

    def tensor_literal(self, children):
        return _TensorLit(children[0], children[1])

    def dense(self, children):
        return _Dense(children)

    def flat_dense(self, children):
        return _Dense(_numbers(children[0]))

    def blob(self, children):
        return _Blob(_unquote(children[0]), dict(children[1:]), children[0])

    def flat_blob(self, children):
        token = children[0]
        key = _STRING_ITEM.search(token)
        fields = {m[1]: _blob_field_value(m[2], token) for m in _BLOB_FIELD.finditer(token, key.end())}
        return _Blob(_unquote(key.group(), at=token), fields, _token_at(token, "STRING", key))

    def blob_field(self, children):
        value = children[1]
        return (str(children[0]), _unquote(value) if isinstance(value, lark.Token) else value)

    def raw_bytes(self, children):
        return _Raw(_unquote(children[0]))

    def number_list(self, children):
        return list(children)

    def flat_numbers(self, children):
        return _numbers(children[0])


def _ref(token: lark.Token) -> _Ref:
    return _Ref(_name_of(token), token)


def _dim(child: lark.Token | None) -> int | str | None:
    if child is None:
        return None
    if child.type == "INT":
        return int(child)
    return _unquote(child) if child.type == "STRING" else str(child)


# -- splitting the coarse tokens of qir.lark; each has passed its terminal's regex --------

_STRING = r'"(?:[^"\\\n]|\\.)*"'  # qir.lark's STRING; tried first, so the commas in a string stay in it
_DIM_ITEM = re.compile(rf'{_STRING}|[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+|\?')
_OPERAND_ITEM = re.compile(rf'%(?:{_STRING}|[A-Za-z0-9_./\-]+)|none')
_STRING_ITEM = re.compile(_STRING)
_BLOB_FIELD = re.compile(rf'([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*({_STRING}|[^, \t)]+)')
_INT_START = frozenset("-0123456789")


def _dim_text(text: str) -> int | str | None:
    """One dim of a SHAPE token, read as the INT, NAME, STRING or "?" it would lex as."""
    if text == "?":
        return None
    if text[0] == '"':
        return _unquote(text)
    return int(text) if text[0] in _INT_START else text


def _numbers(token: str) -> list[int | float]:
    """The numbers of a NUMBERS token; it holds no strings, so commas split it."""
    return [_number(item.strip()) for item in token[1:-1].split(",")]


def _number(text: str) -> int | float:
    """An int where the INT terminal would match, else a float (inf and nan included)."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _operand(token: lark.Token, match: re.Match) -> _Ref | None:
    return None if match.group() == "none" else _ref(_token_at(token, "VALUE", match))


_ERROR_FIELDS = ("sqnr", "added", "cos", "max")  # ErrorStats' fields, in order
_ERROR_ORDER = "err<...> takes sqnr, added, cos, max in this order"


def _error_figure(name: lark.Token, figure: lark.Token) -> float:
    """The float an ERROR_FIGURE spells; only the decibel fields take the unit dB."""
    number = figure.removesuffix("dB")
    if number != figure and name not in ("sqnr", "added"):
        raise _TextError(figure, f"{name} takes no unit")
    return float(number)


def _blob_field_value(text: str, at: lark.Token) -> str | int | float:
    return _unquote(text, at) if text[0] == '"' else _number(text)


def _token_at(token: lark.Token, type_: str, match: re.Match) -> lark.Token:
    """A token for `match` inside the coarse `token`, placed where errors should point.

    Coarse terminals stay on one line, so the column is the token's plus the offset.
    """
    offset = match.start()
    return lark.Token(type_, match.group(), token.start_pos + offset, token.line, token.column + offset)


def _dtype(token: lark.Token) -> DType:
    try:
        return DType.from_short_name(str(token))
    except ValueError:
        raise _TextError(token, f"unknown element type {str(token)!r}") from None


# -- building the IR ----------------------------------------------------------------------


class _Builder:
    def __init__(self, source: str, weights: Mapping[str, np.ndarray] | None) -> None:
        self.source = source
        self.weights = weights

    def error(self, token: lark.Token | None, message: str) -> ParseError:
        line, column = (token.line, token.column) if token is not None else (1, 1)
        return ParseError(self.source, line, column, message)

    def model(self, record: list) -> Model:
        *fields, graph_record = record
        opsets: dict[str, int] = {}
        metadata: dict[str, str] = {}
        scalars: dict[str, Any] = {}
        for kind, *payload in fields:
            if kind == "opsets":
                opsets = payload[0]
            elif kind == "metadata":
                metadata = payload[0]
            else:
                key, value = payload
                if key not in _MODEL_FIELDS:
                    raise self.error(key, f"unknown model field {str(key)!r} (known: {', '.join(_MODEL_FIELDS)})")
                scalars[_MODEL_FIELDS[key]] = value
        return Model(self.graph(graph_record, {}), opsets, metadata=metadata, **scalars)

    def graph(self, record: _GraphRecord, outer: dict[str, Value]) -> Graph:
        scope = dict(outer)
        local: set[str] = set()

        def define(decl: _Decl, **extra: Any) -> Value:
            name = decl.ref.name
            if name in scope:
                where = "in this graph" if name in local else "in an enclosing graph"
                raise self.error(decl.ref.token, f"%{name} is already defined {where}")
            quant = self.quant(decl.quant) if decl.quant else None
            value = Value(name, decl.type, quant=quant, meta=decl.meta, error=decl.error, **extra)
            if decl.observed is not None:
                value.observed_range = self.observed_range(decl)
            scope[name] = value
            local.add(name)
            return value

        graph = Graph(record.name)
        for decl in record.inputs:
            graph.add_input(define(decl))
        pending: list[tuple[_NodeRecord, list[Value]]] = []
        for statement in record.statements:
            if isinstance(statement, _NodeRecord):
                pending.append((statement, [define(d) for d in statement.results]))
            elif statement[0] == "const":
                _, decl, data = statement
                if not isinstance(decl.type, TensorType):
                    raise self.error(decl.ref.token, f"constant %{decl.ref.name} needs a tensor type")
                value = define(decl, const=self.tensor(decl.type, data, decl.ref))
                graph.add_constant(value)
            else:
                _, ref, data = statement
                value = scope.get(ref.name)
                if value is None or value not in graph.inputs:
                    raise self.error(ref.token, f"default for %{ref.name}, which is not an input of this graph")
                if not isinstance(value.type, TensorType):
                    raise self.error(ref.token, f"input %{ref.name} needs a tensor type to take a default")
                value.const = self.tensor(value.type, data, ref)
                graph.add_constant(value)
        for record_node, outputs in pending:
            inputs = [None if r is None else self.resolve(scope, r) for r in record_node.operands]
            attributes = {key: self.attribute(value, scope, key) for key, value in record_node.attributes}
            graph.append(
                Node(record_node.op_type, inputs, outputs, attributes=attributes,
                     domain=record_node.domain, name=record_node.name, meta=record_node.meta)
            )
        graph.set_outputs([self.resolve(scope, r) for r in record.outputs])
        if not _is_sorted(graph):
            graph.sort()
        return graph

    def observed_range(self, decl: _Decl) -> tuple[float, float]:
        bounds = decl.observed.bounds
        if len(bounds) != 2 or not float(bounds[0]) <= float(bounds[1]):
            raise self.error(decl.ref.token, f"%{decl.ref.name}: range=[lo, hi] takes two numbers with lo <= hi")
        return float(bounds[0]), float(bounds[1])

    def resolve(self, scope: dict[str, Value], ref: _Ref) -> Value:
        try:
            return scope[ref.name]
        except KeyError:
            raise self.error(ref.token, f"%{ref.name} is not defined") from None

    def quant(self, record: _QuantRecord) -> QuantParams:
        unknown = set(record.fields) - {"axis", "block", "scale", "zp"}
        if unknown:
            raise self.error(record.token, f"unknown quantization field(s): {', '.join(sorted(unknown))}")
        if "scale" not in record.fields:
            raise self.error(record.token, "quantization parameters need a scale")
        scale = self.quant_array(record.fields["scale"], DType.FLOAT, record.token)
        zp = record.fields.get("zp", 0)
        zero_point = self.quant_array(zp, record.dtype, record.token)
        if zero_point.ndim == 0 and scale.ndim > 0:
            zero_point = np.zeros_like(scale, dtype=record.dtype.numpy)
        try:
            return QuantParams(record.dtype, scale, zero_point, record.fields.get("axis"), record.fields.get("block"))
        except ValueError as err:
            raise self.error(record.token, str(err)) from None

    def quant_array(self, data: Any, dtype: DType, token: lark.Token) -> np.ndarray:
        if isinstance(data, _TensorLit):
            return self.tensor(data.type, data.data, None, token)
        return self.elements(np.array(data).shape, dtype, data if isinstance(data, list) else [data], token)

    def tensor(self, type_: TensorType, data: Any, ref: _Ref | None, token: lark.Token | None = None) -> np.ndarray | ElidedTensor:
        token = ref.token if ref is not None else token
        what = f"constant %{ref.name}" if ref is not None else "tensor"
        if type_.shape is None or not all(isinstance(d, int) for d in type_.shape):
            raise self.error(token, f"{what} needs a static shape")
        shape = tuple(type_.shape)
        if isinstance(data, _Dense):
            return self.elements(shape, type_.dtype, data.elements, token, what)
        if isinstance(data, _Raw):
            try:
                raw = bytes.fromhex(data.hex)
                return np.frombuffer(raw, dtype=type_.dtype.numpy).reshape(shape).copy()
            except ValueError as err:
                raise self.error(token, f"{what}: bad raw bytes ({err})") from None
        return self.blob(type_.dtype, shape, data, what)

    def elements(self, shape: tuple, dtype: DType, elements: list, token, what: str = "tensor") -> np.ndarray:
        count = math.prod(shape)
        if len(elements) != count:
            raise self.error(token, f"{what}: {len(elements)} value(s) for shape {list(shape)} ({count} elements)")
        if dtype == DType.STRING:
            if not all(isinstance(e, str) for e in elements):
                raise self.error(token, f"{what}: a string tensor takes only strings")
            array = np.empty(len(elements), dtype=object)
            array[:] = [e.encode("utf-8", errors="surrogateescape") for e in elements]
            return array.reshape(shape)
        if any(isinstance(e, str) for e in elements):
            raise self.error(token, f"{what}: strings in a {dtype.short_name} tensor")
        if dtype.is_float:
            if dtype == DType.DOUBLE:
                return np.array(elements, dtype=np.float64).reshape(shape)
            return np.array(elements, dtype=np.float64).astype(np.float32).astype(dtype.numpy).reshape(shape)
        if any(isinstance(e, float) for e in elements):
            raise self.error(token, f"{what}: a float value in a {dtype.short_name} tensor")
        wide = np.uint64 if dtype == DType.UINT64 else np.int64
        try:
            return np.array(elements, dtype=wide).astype(dtype.numpy).reshape(shape)
        except OverflowError as err:
            raise self.error(token, f"{what}: {err}") from None

    def blob(self, dtype: DType, shape: tuple, blob: _Blob, what: str) -> np.ndarray | ElidedTensor:
        expected = blob.fields.get("digest")
        if self.weights is None:
            if not isinstance(expected, str):
                raise self.error(blob.token, f"{what}: blob without a digest")
            return ElidedTensor(dtype, shape, blob.key, expected, blob.fields.get("min"), blob.fields.get("max"))
        if blob.key not in self.weights:
            raise self.error(blob.token, f"{what}: the weights file has no entry {blob.key!r}")
        raw = np.asarray(self.weights[blob.key])
        try:
            array = np.frombuffer(raw.tobytes(), dtype=dtype.numpy).reshape(shape)
        except ValueError:
            raise self.error(blob.token, f"{what}: weights entry {blob.key!r} has {raw.nbytes} bytes, "
                             f"not {dtype.short_name}{list(shape)}") from None
        if expected is not None and digest(array) != expected:
            raise self.error(blob.token, f"{what}: weights entry {blob.key!r} does not match the digest in the text")
        return array.copy()

    def attribute(self, value: Any, scope: dict[str, Value], key: str) -> Attr:
        if isinstance(value, _EmptyList):
            return Attr(value.kind, ())
        if isinstance(value, list):
            kinds = {_scalar_kind(v) for v in value}
            if kinds == {AttrKind.INT, AttrKind.FLOAT}:
                kinds = {AttrKind.FLOAT}
            if len(kinds) != 1:
                raise self.error(None, f"attribute {key!r} mixes element kinds")
            kind = kinds.pop()
            return Attr(kind.list_of, [self.attribute_scalar(kind, v, scope) for v in value])
        kind = _scalar_kind(value)
        return Attr(kind, self.attribute_scalar(kind, value, scope))

    def attribute_scalar(self, kind: AttrKind, value: Any, scope: dict[str, Value]) -> Any:
        if kind == AttrKind.GRAPH:
            return self.graph(value, scope)
        if kind == AttrKind.TENSOR:
            return self.tensor(value.type, value.data, None)
        if kind == AttrKind.SPARSE_TENSOR:
            values = self.tensor(value.values.type, value.values.data, None)
            indices = self.tensor(value.indices.type, value.indices.data, None)
            return SparseTensor(values, indices, tuple(value.type.shape or ()))
        if kind == AttrKind.TYPE_PROTO:
            return value.type
        return value


def _scalar_kind(value: Any) -> AttrKind:
    if isinstance(value, bool | int):
        return AttrKind.INT
    if isinstance(value, float):
        return AttrKind.FLOAT
    if isinstance(value, str):
        return AttrKind.STRING
    if isinstance(value, _TensorLit):
        return AttrKind.TENSOR
    if isinstance(value, _GraphRecord):
        return AttrKind.GRAPH
    if isinstance(value, _SparseLit):
        return AttrKind.SPARSE_TENSOR
    return AttrKind.TYPE_PROTO


def _is_sorted(graph: Graph) -> bool:
    seen = set(graph.inputs) | set(graph.constants)
    for node in graph.nodes:
        if any(v is not None and v.graph is graph and v not in seen for v in node.inputs):
            return False
        seen.update(node.outputs)
    return True


_MODEL_FIELDS = {
    "ir_version": "ir_version",
    "producer": "producer_name",
    "producer_version": "producer_version",
    "domain": "domain",
    "doc": "doc_string",
    "model_version": "model_version",
}
