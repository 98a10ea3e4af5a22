"""Parametrised scenario files: ``params``, ``for`` loops, ``when`` and ``{expressions}``.

A file that declares ``params = { test_page = [0, 1, 2, 3] }`` is a template: it expands
into one scenario per combination of values, each named by its ``name`` with the values
put in (``name = "indexing_page{test_page}"``; a name that does not mention a parameter
gets ``[test_page=2]`` appended). In such a file a step's strings may hold expressions in
braces (``offset = "page:{test_page}"``, ``data = "{page * 16 + 3:02x}"``), a step may
carry ``when = "page != test_page"``, and a ``for`` step repeats its ``[[step.do]]``
steps (``for = { page = "range(4)" }``). docs/scenarios.md, *Parameters*, has the grammar.

Expressions are a small, safe subset of Python's: integers, strings, names of parameters
and loop variables (and ``pages``), ``+ - * // %``, comparisons, ``and``/``or``/``not``,
``x if c else y``, tuples, ``in`` and ``range(...)``. A file without ``params`` is read as
written: its braces are plain text.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any

#: Values one parameter may take, and runs one file may expand into.
MAX_VALUES = 64
MAX_RUNS = 256
#: Longest expression text.
MAX_EXPRESSION = 200
_FIELD = re.compile(r"\{([^{}]+)\}")
_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
#: Largest integer an expression may produce (a u64 and a bit).
_LIMIT = 1 << 65


class TemplateError(ValueError):
    """A template that cannot be expanded; the message says where and why."""


def evaluate(text: str, names: Mapping[str, int]) -> Any:
    """The value of expression ``text`` with ``names`` bound; :class:`TemplateError` if
    it is not in the subset or names something unbound."""
    if len(text) > MAX_EXPRESSION:
        raise TemplateError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise TemplateError(f"{text!r} is not an expression") from None
    return _eval(tree.body, names, text)


def _eval(node: ast.AST, names: Mapping[str, int], text: str) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, str, bool):
        if isinstance(node.value, int) and abs(node.value) > _LIMIT:
            raise TemplateError(f"{text!r}: value too large")
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise TemplateError(f"{text!r}: unknown name {node.id!r} (known: {', '.join(names) or 'none'})")
        return names[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, names, text) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        value = _eval(node.operand, names, text)
        return not value if isinstance(node.op, ast.Not) else -_int(value, text)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _int(_eval(node.left, names, text), text), _int(_eval(node.right, names, text), text)
        if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and right == 0:
            raise TemplateError(f"{text!r}: division by zero")
        result = _BINARY[type(node.op)](left, right)
        if abs(result) > _LIMIT:
            raise TemplateError(f"{text!r}: value too large")
        return result
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _eval(node.left, names, text)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, names, text)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                raise TemplateError(f"{text!r}: cannot compare {left!r} with {right!r}") from None
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, names, text) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.IfExp):
        chosen = node.body if _eval(node.test, names, text) else node.orelse
        return _eval(chosen, names, text)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
        and 1 <= len(node.args) <= 3
    ):
        bounds = [_int(_eval(a, names, text), text) for a in node.args]
        if len(bounds) == 3 and bounds[2] == 0:
            raise TemplateError(f"{text!r}: range() step must not be zero")
        span = range(*bounds)
        if len(span) > MAX_VALUES:
            raise TemplateError(f"{text!r}: more than {MAX_VALUES} values")
        return tuple(span)
    raise TemplateError(
        f"{text!r}: only integers, names, + - * // %, comparisons, and/or/not, "
        "'x if c else y', tuples and range() are allowed"
    )


def _int(value: Any, text: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TemplateError(f"{text!r}: {value!r} is not an integer")
    return value


def substitute(value: Any, names: Mapping[str, int]) -> Any:
    """``value`` with every ``{expression}`` in its strings replaced (recursively through
    lists and tables). A string that is one whole ``{expression}`` takes the expression's
    value (an integer stays an integer); ``{expression:spec}`` formats it (``02x``)."""
    if isinstance(value, str):
        whole = _FIELD.fullmatch(value)
        if whole and ":" not in whole[1]:
            return evaluate(whole[1], names)
        return _FIELD.sub(lambda m: _format(m[1], names), value)
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, Mapping):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def _format(field: str, names: Mapping[str, int]) -> str:
    expression, _, spec = field.partition(":")
    result = evaluate(expression, names)
    try:
        return format(result, spec)
    except (ValueError, TypeError):
        raise TemplateError(f"{{{field}}}: bad format {spec!r} for {result!r}") from None


def parameters(doc: Mapping[str, Any]) -> list[dict[str, int]]:
    """Every combination of the file's ``params`` values, in order (one empty one without)."""
    declared = doc.get("params")
    if declared is None:
        return [{}]
    if not isinstance(declared, Mapping) or not declared:
        raise TemplateError("field 'params': must be a table of name = [values], e.g. { test_page = [0, 1] }")
    lists: list[list[int]] = []
    for name, values in declared.items():
        if not isinstance(name, str) or not name.isidentifier() or name == "pages":
            raise TemplateError(
                f"field 'params': {name!r} is not a parameter name (a letter, then letters, digits, _)"
            )
        if (
            not isinstance(values, list)
            or not values
            or len(values) > MAX_VALUES
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise TemplateError(f"field 'params.{name}': must be a list of 1 to {MAX_VALUES} integers")
        if len(set(values)) != len(values):
            raise TemplateError(f"field 'params.{name}': lists a value twice")
        lists.append(values)
    names = list(declared)
    combos = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]
    if len(combos) > MAX_RUNS:
        raise TemplateError(f"field 'params': {len(combos)} runs is more than the limit of {MAX_RUNS}")
    return combos


def run_name(template: str, values: Mapping[str, int]) -> str:
    """The name of the run for ``values``: the template with them put in, and any that it
    does not mention appended as ``[name=value]``."""
    name = str(substitute(template, values))
    mentioned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(_FIELD.findall(template))))
    missing = [f"{k}={v}" for k, v in values.items() if k not in mentioned]
    return name + (f"[{','.join(missing)}]" if missing else "")


def expand_steps(steps: Any, names: Mapping[str, int], limit: int) -> Any:
    """The plain steps of a template's ``step`` list with ``names`` bound: loops unrolled,
    steps whose ``when`` is false left out, expressions replaced; :class:`TemplateError`
    past ``limit`` steps. Anything but a list is returned as it is (the format judges it)."""
    if not isinstance(steps, list):
        return steps
    out: list[Any] = []
    for number, raw in enumerate(steps, start=1):
        try:
            _expand(raw, names, out, limit)
        except TemplateError as err:
            raise TemplateError(f"step {number}: {err}") from None
    return out


def _expand(raw: Any, names: Mapping[str, int], out: list[Any], limit: int) -> None:
    if isinstance(raw, Mapping) and "when" in raw:
        condition = raw["when"]
        if not isinstance(condition, str):
            raise TemplateError("field 'when': must be an expression string, e.g. 'page != test_page'")
        if not evaluate(condition, names):
            return
    if not isinstance(raw, Mapping) or "for" not in raw:
        if len(out) >= limit:
            raise TemplateError(f"the expanded steps are more than the limit of {limit}")
        plain = raw if not isinstance(raw, Mapping) else {k: v for k, v in raw.items() if k != "when"}
        out.append(substitute(plain, names))
        return
    loop, body = raw["for"], raw.get("do")
    extra = [k for k in raw if k not in ("for", "do", "when")]
    if extra:
        raise TemplateError(f"field {extra[0]!r}: a 'for' step takes only 'for', 'do' and 'when'")
    if not isinstance(loop, Mapping) or len(loop) != 1:
        raise TemplateError("field 'for': must be one name = values, e.g. { page = 'range(4)' }")
    if not isinstance(body, list) or not body:
        raise TemplateError("field 'do': a 'for' step needs at least one [[step.do]] table")
    ((var, values),) = loop.items()
    if not isinstance(var, str) or not var.isidentifier() or var in names:
        raise TemplateError(f"field 'for': {var!r} is not a new name")
    if isinstance(values, str):
        values = evaluate(values, names)
    if (
        not isinstance(values, (list, tuple))
        or len(values) > MAX_VALUES
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
        raise TemplateError(f"field 'for.{var}': must give a list of at most {MAX_VALUES} integers")
    for value in values:
        inner = {**names, var: value}
        for item in body:
            _expand(item, inner, out, limit)
