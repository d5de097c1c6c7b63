"""Tools of the example agent (examples/assistant.toml): a safe calculator and a unit converter.

Both are plain typed functions turned into tools with ``@tool``; their argument schemas come from
the type hints, their descriptions from the docstrings. They are quick and pure, so they run
``inline`` on the event loop instead of in a worker thread.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from executus_core import tool

__all__ = ["calculate", "convert_units"]

MAX_EXPRESSION_LENGTH = 500
MAX_EXPONENT_DIGITS = 1000  # 10**1000 is already far past anything a person asks for

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _power(base: Any, exponent: Any) -> Any:
    # ``9 ** 9 ** 9`` would pin a core for minutes: refuse results with more than ~1000 digits.
    if base not in (0, 1, -1) and abs(exponent) * math.log10(max(abs(base), 1e-300)) > MAX_EXPONENT_DIGITS:
        raise ValueError(f"{base} ** {exponent} is too large to compute")
    return operator.pow(base, exponent)


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        binary = _BINARY.get(type(node.op))
        if binary is not None:
            return binary(left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))
    shown = ast.unparse(node) if isinstance(node, ast.expr) else type(node).__name__
    raise ValueError(
        f"{shown!r} is not allowed: use numbers, + - * / // % **, parentheses, "
        f"{', '.join(_CONSTANTS)} and {', '.join(_FUNCTIONS)}()"
    )


def _tidy(value: float) -> float | int:
    # 0.1 + 0.2 should read 0.3 to a model and a person: keep 12 significant digits.
    if isinstance(value, int):
        return value
    rounded = float(f"{value:.12g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded


@tool(inline=True)
def calculate(expression: str) -> float | int:
    """Evaluate an arithmetic expression exactly as written, e.g. "6.2137 * 6" or "sqrt(2) / 3".

    Supports numbers, + - * / // % **, parentheses, the constants pi, e and tau, and the functions
    abs, round, min, max, sqrt, log, log10, exp, sin, cos, tan, floor and ceil.
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{expression!r} is not an arithmetic expression: {exc.msg}") from None
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        raise ValueError(f"{expression!r} divides by zero") from None
    except OverflowError:
        raise ValueError(f"{expression!r} overflows a floating-point number") from None
    if isinstance(value, complex):
        raise ValueError(f"{expression!r} has no real value")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{expression!r} overflows a floating-point number")
    return _tidy(value)


# unit -> (dimension, size in the dimension's base unit)
_UNITS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "cm": ("length", 0.01),
    "mm": ("length", 0.001),
    "mi": ("length", 1609.344),
    "yd": ("length", 0.9144),
    "ft": ("length", 0.3048),
    "in": ("length", 0.0254),
    "nmi": ("length", 1852.0),
    "kg": ("mass", 1.0),
    "g": ("mass", 0.001),
    "mg": ("mass", 1e-6),
    "t": ("mass", 1000.0),
    "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125),
    "l": ("volume", 1.0),
    "ml": ("volume", 0.001),
    "m3": ("volume", 1000.0),
    "gal": ("volume", 3.785411784),
    "s": ("time", 1.0),
    "min": ("time", 60.0),
    "h": ("time", 3600.0),
    "day": ("time", 86400.0),
    "m/s": ("speed", 1.0),
    "km/h": ("speed", 1000.0 / 3600.0),
    "mph": ("speed", 1609.344 / 3600.0),
    "kn": ("speed", 1852.0 / 3600.0),
}
_TEMPERATURES = {"c", "f", "k"}
_ALIASES = {
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "kilometer": "km",
    "kilometers": "km",
    "kilometre": "km",
    "kilometres": "km",
    "centimeter": "cm",
    "centimeters": "cm",
    "millimeter": "mm",
    "millimeters": "mm",
    "mile": "mi",
    "miles": "mi",
    "yard": "yd",
    "yards": "yd",
    "foot": "ft",
    "feet": "ft",
    "inch": "in",
    "inches": "in",
    "kilogram": "kg",
    "kilograms": "kg",
    "gram": "g",
    "grams": "g",
    "pound": "lb",
    "pounds": "lb",
    "lbs": "lb",
    "ounce": "oz",
    "ounces": "oz",
    "tonne": "t",
    "tonnes": "t",
    "liter": "l",
    "liters": "l",
    "litre": "l",
    "litres": "l",
    "milliliter": "ml",
    "milliliters": "ml",
    "gallon": "gal",
    "gallons": "gal",
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "days": "day",
    "kph": "km/h",
    "knots": "kn",
    "celsius": "c",
    "°c": "c",
    "fahrenheit": "f",
    "°f": "f",
    "kelvin": "k",
}


def _unit(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _UNITS and key not in _TEMPERATURES:
        known = ", ".join([*_UNITS, "C", "F", "K"])
        raise ValueError(f"unknown unit {name!r}; known units: {known}")
    return key


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32, "k": value}[unit]


@tool(inline=True)
def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    """Convert a quantity between units of length, mass, volume, time, speed or temperature.

    Units: m km cm mm mi yd ft in nmi, kg g mg t lb oz, l ml m3 gal, s min h day,
    m/s km/h mph kn, and C F K (full names such as "miles" or "celsius" work too).
    """
    source, target = _unit(from_unit), _unit(to_unit)
    if source in _TEMPERATURES or target in _TEMPERATURES:
        if not (source in _TEMPERATURES and target in _TEMPERATURES):
            raise ValueError(
                f"cannot convert between {from_unit!r} and {to_unit!r}: only one is a temperature"
            )
        result = _from_kelvin(_to_kelvin(value, source), target)
    else:
        (source_dimension, source_size), (target_dimension, target_size) = _UNITS[source], _UNITS[target]
        if source_dimension != target_dimension:
            raise ValueError(
                f"cannot convert {source_dimension} ({from_unit!r}) to {target_dimension} ({to_unit!r})"
            )
        result = value * source_size / target_size
    return {"value": value, "from": from_unit, "to": to_unit, "result": _tidy(result)}
