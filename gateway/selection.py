"""JMESPath evaluation for context selections, with equality filters run as a plain loop.

The selection a lookup most often makes picks the one item the held call names out of a list the
upstream returned: `orders[?orderId == {{ args.orderId }}] | [0]`. JMESPath's interpreter walks
the comparison's tree for every element (three visits and a dispatch each), so over an order book
of a thousand orders picking one costs milliseconds, for every request made. Here a filter whose
condition is a field path compared for equality with a literal reads the path and compares in one
loop, with JMESPath's own equality (`true` is not `1`); every other expression, and every other
part of this one, is evaluated by JMESPath itself. The result is the same value JMESPath gives.
"""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath import visitor

# A node of JMESPath's parsed tree: {"type": …, "children": […], "value": …}.
_Node = Any


def search(expression: str, data: Any) -> Any:
    """What `expression` selects from `data`, exactly as `jmespath.search` would."""
    return _Interpreter().visit(jmespath.compile(expression).parsed, data)


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
        equals = self.COMPARATOR_FUNC["eq"]  # JMESPath's equality, for which `true` is not `1`
        collected = []
        for element in base:
            found = _read(element, path)
            if equals(literal, found) if literal_first else equals(found, literal):
                current = element if projected["type"] == "identity" else self.visit(projected, element)
                if current is not None:
                    collected.append(current)
        return collected
