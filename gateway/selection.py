"""JMESPath evaluation for context selections, with equality filters run as a plain loop.

The selection a lookup most often makes picks the one item the held call names out of a list the
upstream returned: `orders[?orderId == {{ args.orderId }}] | [0]`. JMESPath's interpreter walks
the comparison's tree for every element (three visits and a dispatch each), so over an order book
of a thousand orders picking one costs milliseconds, for every request made. Here a filter whose
condition is a field path compared for equality with a literal reads the path and compares in one
loop, with JMESPath's own equality (`true` is not `1`); every other expression, and every other
part of this one, is evaluated by JMESPath itself. The result is the same value JMESPath gives.

Two things are done once instead of for every request. A selection with references to the held
call (`{{ args.orderId }}`) is a different expression for every call; `search_template` parses it
once with a placeholder literal for each reference and puts each call's literals into a copy of
that tree. And the positions of a list's elements by the value at a filter's path are kept for the
last few lists filtered (the order book every request of a burst shares), so picking one is a
dictionary lookup. Data given to a search is only read, never changed.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jmespath
from jmespath import visitor

# A node of JMESPath's parsed tree: {"type": …, "children": […], "value": …}.
_Node = Any

# The placeholder a reference becomes while a template is parsed: a string literal with its number after it.
_MARK = "countersign:reference:6a1f:"
# Lists whose elements are indexed by a path's value: the latest few, so a burst's shared answer is indexed once.
_INDEXED = 4
_Key = tuple[str, Any]


def search(expression: str, data: Any) -> Any:
    """What `expression` selects from `data`, exactly as `jmespath.search` would."""
    return _Interpreter().visit(jmespath.compile(expression).parsed, data)


def search_template(template: str, reference: re.Pattern[str], literals: Sequence[str], data: Any) -> Any:
    """`search` of `template` with its matches of `reference` replaced, in order, by `literals` (each a JMESPath
    literal such as `` `"X1"` ``). The template is parsed once; each literal is parsed on its own."""
    parsed = _template(template, reference)
    if parsed is None:  # a reference JMESPath would not read as a literal of its own: the expression as written
        given = iter(literals)
        return search(reference.sub(lambda _: next(given), template), data)
    tree, holding = parsed
    values = [jmespath.compile(text).parsed["value"] for text in literals]
    return _Interpreter().visit(_fill(tree, values, holding), data)


@functools.lru_cache(maxsize=256)
def _template(template: str, reference: re.Pattern[str]) -> tuple[_Node, frozenset[int]] | None:
    """The template's parsed tree and the ids of its nodes that hold a placeholder (the only ones `_fill` copies)."""
    numbers = itertools.count()
    marked = reference.sub(lambda _: "`" + json.dumps(f"{_MARK}{next(numbers)}") + "`", template)
    count = next(numbers)
    try:
        tree = jmespath.compile(marked).parsed
    except jmespath.exceptions.JMESPathError:
        return None
    marks: list[str] = []
    holding: set[int] = set()
    _collect(tree, marks, holding)
    # Every placeholder must be a literal of its own, once, and appear nowhere else (inside a raw string, say).
    if sorted(marks) != sorted(f"{_MARK}{n}" for n in range(count)) or repr(tree).count(_MARK) != count:
        return None
    return tree, frozenset(holding)


def _is_mark(node: _Node) -> bool:
    return node["type"] == "literal" and isinstance(node["value"], str) and node["value"].startswith(_MARK)


def _collect(node: _Node, marks: list[str], holding: set[int]) -> bool:
    """Gather the placeholders under `node` into `marks`, the ids of the nodes above one into `holding`."""
    held = _is_mark(node)
    if held:
        marks.append(node["value"])
    for child in node.get("children") or ():
        if isinstance(child, dict) and _collect(child, marks, holding):
            held = True
    if held:
        holding.add(id(node))
    return held


def _fill(node: _Node, values: Sequence[Any], holding: frozenset[int]) -> _Node:
    """A copy of `node` with each placeholder replaced by its value; the parts without one are shared."""
    if id(node) not in holding:
        return node
    if _is_mark(node):
        return {"type": "literal", "children": [], "value": values[int(node["value"][len(_MARK) :])]}
    children = node["children"]
    return {**node, "children": [_fill(c, values, holding) if isinstance(c, dict) else c for c in children]}


def _key(value: Any) -> _Key | None:
    """`value` as a dictionary key under JMESPath's equality (a boolean never equals a number); None when it is
    not a scalar (a list or an object is compared element by element)."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    return None


_indexes: OrderedDict[tuple[int, tuple[str, ...]], tuple[list[Any], dict[_Key, list[int]]]] = OrderedDict()


def _positions(base: list[Any], path: tuple[str, ...]) -> dict[_Key, list[int]]:
    """The positions of `base`'s elements by the scalar at `path`, in order; kept for the latest lists."""
    slot = (id(base), path)
    kept = _indexes.get(slot)
    if kept is not None and kept[0] is base:
        _indexes.move_to_end(slot)
        return kept[1]
    index: dict[_Key, list[int]] = {}
    for position, element in enumerate(base):
        key = _key(_read(element, path))
        if key is not None:
            index.setdefault(key, []).append(position)
    _indexes[slot] = (base, index)  # the list is kept with its index, so its id is not reused while indexed
    while len(_indexes) > _INDEXED:
        _indexes.popitem(last=False)
    return index


def _path(node: _Node) -> tuple[str, ...] | None:
    """The field names of a plain path (`a` or `a.b.c`), or None for any other expression."""
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] == "subexpression":
        names = []
        for child in node["children"]:
            if child["type"] != "field":
                return None
            names.append(child["value"])
        return tuple(names)
    return None


def _read(element: Any, path: tuple[str, ...]) -> Any:
    # As JMESPath reads a field: the value's key, or None when the value is not an object.
    for name in path:
        try:
            element = element.get(name)
        except AttributeError:
            return None
    return element


class _Interpreter(visitor.TreeInterpreter):
    def visit_filter_projection(self, node: _Node, value: Any) -> list[Any] | None:
        comparator = node["children"][2]
        if comparator["type"] != "comparator" or comparator["value"] != "eq":
            return super().visit_filter_projection(node, value)
        left, right = comparator["children"]
        if right["type"] == "literal" and (path := _path(left)) is not None:
            literal, literal_first = right["value"], False
        elif left["type"] == "literal" and (path := _path(right)) is not None:
            literal, literal_first = left["value"], True
        else:
            return super().visit_filter_projection(node, value)
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        projected = node["children"][1]
        key = _key(literal)
        if key is not None:
            # A scalar equals exactly the elements with the same key at the path: read from the list's index.
            matching = [base[position] for position in _positions(base, path).get(key, ())]
        else:
            equals = self.COMPARATOR_FUNC["eq"]  # JMESPath's equality, for which `true` is not `1`
            matching = [
                e
                for e in base
                if (equals(literal, _read(e, path)) if literal_first else equals(_read(e, path), literal))
            ]
        collected = []
        for element in matching:
            current = element if projected["type"] == "identity" else self.visit(projected, element)
            if current is not None:
                collected.append(current)
        return collected
