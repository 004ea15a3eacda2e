"""Objectives: a feature name ("PL_I") or a formula of features ("PL_I / FWHM_nm").

Formulas are parsed, not evaluated as Python: only feature names, numbers, + - * / ** and the
functions log, log10, sqrt, exp and abs are allowed, so an objective typed in the Prefect UI
cannot run code.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass

from hardware.errors import SdflInputError, did_you_mean

_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "log": math.log, "log10": math.log10, "sqrt": math.sqrt, "exp": math.exp, "abs": abs,
}
_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a**b}


@dataclass(frozen=True)
class Objective:
    expression: str
    features: tuple[str, ...]
    _tree: ast.Expression

    def __call__(self, row: dict) -> float:
        """The objective of one experiment row; NaN when a feature is missing or the math fails."""
        try:
            value = float(_evaluate(self._tree.body, row))
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError):
            return float("nan")
        return value if math.isfinite(value) else float("nan")


def parse_objective(expression: str, feature_columns: list[str]) -> Objective:
    """Check an objective against the known features; raise SdflInputError naming what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise SdflInputError("objective must be a feature name or a formula of features, e.g. 'PL_I'")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise SdflInputError(f"objective {expression!r} is not a formula: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise SdflInputError(f"objective of {len(expression)} characters is nested too deeply to parse") from None
    names: list[str] = []
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id in _FUNCTIONS and id(node) not in called:
                raise SdflInputError(f"objective {expression!r}: {node.id} is a function; call it, e.g. {node.id}(PL_I)")
            names.append(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise SdflInputError(f"objective {expression!r}: {node.value!r} is not a real number")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or len(node.args) != 1:
                raise SdflInputError(f"objective {expression!r}: only {sorted(_FUNCTIONS)} of one argument are allowed")
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Load,
                                   ast.USub, ast.UAdd, *_OPERATORS)):
            raise SdflInputError(f"objective {expression!r}: {type(node).__name__} is not allowed in a formula")
    features = [n for n in names if n not in _FUNCTIONS]
    unknown = sorted(set(features) - set(feature_columns))
    if unknown:
        numeric = [c for c in feature_columns if not c.startswith("flag_")]
        hint = did_you_mean(unknown[0], numeric)
        raise SdflInputError(f"objective {expression!r} names unknown feature(s) {', '.join(unknown)}{hint}; the "
                             f"features are: {', '.join(numeric)}")
    if not features:
        raise SdflInputError(f"objective {expression!r} uses no feature")
    return Objective(expression.strip(), tuple(dict.fromkeys(features)), tree)


def _evaluate(node, row):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        value = row[node.id]
        if value is None:
            raise ValueError(node.id)
        return float(value)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, row)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_evaluate(node.left, row), _evaluate(node.right, row))
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](_evaluate(node.args[0], row))
    raise TypeError(type(node).__name__)
