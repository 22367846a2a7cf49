"""Closed-form learning-rate policies: ``α_i / α_base = expression(features)``.

A :class:`Formula` is an arithmetic expression over the observation features of one feature set
(:data:`lrenv.env.features.FEATURE_SETS`), e.g. ``"0.5*(1 + cos(pi*progress))"``: its value is
the ratio of the next epoch's LR to the base LR (the optimizer's LR when a scheduler is created,
the task's ``default_lr`` in the env). It is parsed with :func:`ast.parse` and checked against
a fixed grammar before anything is evaluated; the text is never handed to ``eval``, ``exec`` or
``sympify``. Allowed are:

* numbers (``2``, ``0.5``, ``1e-3``) and the constants ``pi`` and ``e`` (``E`` too);
* the variables of the formula's feature set (``progress``, ``valid_loss``, ...);
* unary ``+``/``-``; binary ``+ - * / **``;
* the functions ``exp log sqrt abs tanh sin cos square`` (one argument), ``pow`` (two) and
  ``min``/``max`` (two or more, elementwise); ``Abs``, ``Min`` and ``Max`` as sympy prints them.

Anything else (attributes, subscripts, calls of other names, keywords, strings, lambdas,
comprehensions, comparisons) is a ``ValueError`` naming the offending piece and what is
allowed. The text is at most :data:`MAX_LENGTH` characters, the tree at most :data:`MAX_DEPTH`
deep. Evaluation is vectorised numpy in float64; overflow and invalid values (``log(-1)``) give
inf/nan silently.

As a policy (:func:`load_formula`, :func:`formula_policy`) a formula acts in the env's
``"multiplier"`` action mode with a constant base shape: ``lr = base * f ** a`` with
``a = clip(ln(ratio) / ln(f), -1, 1)``, so the LR is ``base * ratio`` clipped to
``[base/f, base*f]`` (``f``: ``relative_factor``; in the env and the evaluation harness also
clipped to the task's ``lr_range``). A ratio that is NaN, 0 or negative gives ``a = -1``, the
smallest LR ``base/f``; ``+inf`` gives ``a = 1``. Formulas are stored as ``formula.json``
(:func:`save_formula`, :func:`read_formula`)::

    {"format": "lrenv-formula", "version": 1, "name": "...",
     "expression": "0.5*(1 + cos(pi*progress))",     # Python syntax, the grammar above
     "sympy": "...", "latex": "...",                  # informational
     "features": "relative", "variables": ["progress"],
     "relative_factor": 100.0,                        # the ratio is clipped to [1/f, f]
     "tasks": [...], "task_configs": {task: {"epochs": ..., "lr_range": [...], ...}},
     "domain": {...}, "fit": {...}, "source": "..."}  # free-form

Only ``format``, ``version``, ``expression`` and ``features`` are required.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrenv.env.config import EnvConfig
from lrenv.env.features import FEATURE_SETS
from lrenv.policy import LoadedPolicy
from lrenv.run_dir import PolicyFileError, atomic_path, read_json
from lrenv.task import check_lr_range, check_positive_int, is_real, to_float

__all__ = [
    "DEFAULT_RELATIVE_FACTOR",
    "FORMULA_FILE",
    "FORMULA_FORMAT",
    "FORMULA_VERSION",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Formula",
    "FormulaFile",
    "FormulaModel",
    "formula_policy",
    "load_formula",
    "read_formula",
    "save_formula",
]

#: ``"format"`` of a formula file, and the ``"version"`` this lrenv reads and writes.
FORMULA_FORMAT = "lrenv-formula"
FORMULA_VERSION = 1
#: The file name a formula folder holds.
FORMULA_FILE = "formula.json"
#: f: the ratio is clipped to [1/f, f] unless a file or caller says otherwise.
DEFAULT_RELATIVE_FACTOR = 100.0
#: Longest expression text, and deepest expression tree, accepted.
MAX_LENGTH = 4000
MAX_DEPTH = 64

_BIG_EXPONENT = 256  # sympy raises numbers to integer powers up to this exactly; beyond, in float64
_FLOAT_MAX_LOG2, _FLOAT_MIN_LOG2 = 1025, -1075  # sympy numbers beyond float64's range become ±oo or 0, as in numpy


def _sympy_function(name: str) -> Callable[..., Any]:
    """sympy's function ``name``, imported when first called (sympy is needed only by :meth:`Formula.to_sympy`)."""

    def call(*args: Any) -> Any:
        import sympy

        return getattr(sympy, name)(*args)

    return call


def _reduce(op: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def reduced(*args: Any) -> Any:
        out = args[0]
        for arg in args[1:]:
            out = op(out, arg)
        return out

    return reduced


@dataclass(frozen=True)
class _Function:
    arity: int  # -2: two or more
    numpy: Callable[..., np.ndarray]
    sympy: Callable[..., Any]


#: Function name -> (number of arguments, numpy implementation, sympy counterpart).
FUNCTIONS: dict[str, _Function] = {
    "exp": _Function(1, np.exp, _sympy_function("exp")),
    "log": _Function(1, np.log, _sympy_function("log")),
    "sqrt": _Function(1, np.sqrt, _sympy_function("sqrt")),
    "abs": _Function(1, np.abs, _sympy_function("Abs")),
    "tanh": _Function(1, np.tanh, _sympy_function("tanh")),
    "sin": _Function(1, np.sin, _sympy_function("sin")),
    "cos": _Function(1, np.cos, _sympy_function("cos")),
    "square": _Function(1, np.square, lambda x: x**2),
    "pow": _Function(2, np.power, lambda x, y: _sympy_power(x, y)),
    "min": _Function(-2, _reduce(np.minimum), _sympy_function("Min")),
    "max": _Function(-2, _reduce(np.maximum), _sympy_function("Max")),
}
#: sympy's printed names of some functions and constants, accepted as aliases.
_ALIASES = {"Abs": "abs", "Min": "min", "Max": "max", "E": "e"}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARY = {ast.UAdd: "+", ast.USub: "-"}
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}  # ** differs: numpy's, sympy's
_FORBIDDEN = {
    ast.Attribute: "attribute access is",
    ast.Subscript: "subscripts are",
    ast.Lambda: "lambdas are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "and/or are",
    ast.IfExp: "conditional expressions are",
    ast.NamedExpr: "assignments (:=) are",
    ast.Starred: "starred arguments are",
    ast.JoinedStr: "f-strings are",
    ast.List: "lists are",
    ast.Tuple: "tuples are",
    ast.Set: "sets are",
    ast.Dict: "dicts are",
}
_OPERATOR_HINTS = {ast.BitXor: " (use ** for powers)"}

# The checked tree: nested tuples (plain data: it pickles and compares by value).
#   ("num", value)  ("const", "pi"|"e")  ("var", name)  ("neg"|"pos", child)
#   ("bin", op, left, right)  ("call", name, (args...))
_Node = tuple


def _allowed(features: str) -> str:
    names = ", ".join(f.name for f in FEATURE_SETS[features])
    one = " ".join(f"{n}(x)" for n, f in FUNCTIONS.items() if f.arity == 1)
    two = " ".join(f"{n}(x, y)" for n, f in FUNCTIONS.items() if f.arity != 1)
    return (
        f"allowed: numbers; the variables of feature set {features!r} ({names}); the constants pi, e; unary + -; binary + - * / **; the functions {one} {two}"
    )


class _Parser:
    """Turns validated Python syntax into the tuple tree, or raises a ValueError naming the problem."""

    def __init__(self, text: str, features: str) -> None:
        self.text = text
        self.features = features
        self.names = {f.name for f in FEATURE_SETS[features]}

    def fail(self, problem: str, node: ast.AST | None = None) -> ValueError:
        piece = ast.get_source_segment(self.text, node) if node is not None else None
        where = f" in {piece!r}" if piece and piece != self.text else ""
        return ValueError(f"formula {_short(self.text)!r}: {problem}{where}; {_allowed(self.features)}")

    def parse(self) -> _Node:
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"formula {_short(self.text)!r} is not a valid expression: {exc.msg} (column {exc.offset}); {_allowed(self.features)}") from None
        except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting the parser refuses
            raise ValueError(f"formula {_short(self.text)!r} cannot be parsed ({type(exc).__name__}: {exc})") from None
        return self.node(tree.body, 1)

    def node(self, node: ast.AST, depth: int) -> _Node:  # noqa: C901  (one branch per kind of node)
        if depth > MAX_DEPTH:
            raise self.fail(f"the expression is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY:
                raise self.fail(f"the unary operator {_op_text(node.op)!r} is not allowed", node)
            return ("neg" if isinstance(node.op, ast.USub) else "pos", self.node(node.operand, depth + 1))
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                hint = _OPERATOR_HINTS.get(type(node.op), "")
                raise self.fail(f"the operator {_op_text(node.op)!r} is not allowed{hint}", node)
            return ("bin", _BINARY[type(node.op)], self.node(node.left, depth + 1), self.node(node.right, depth + 1))
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        what = _FORBIDDEN.get(type(node), f"{type(node).__name__} expressions are")
        raise self.fail(f"{what} not allowed", node)

    def constant(self, node: ast.Constant) -> _Node:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = {str: "strings", bytes: "bytes", bool: "booleans", complex: "complex numbers"}.get(type(value), f"the constant {value!r}")
            raise self.fail(f"{kind} are not allowed", node)
        if isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                raise self.fail("an integer constant too large for a float", node) from None
        elif not math.isfinite(value):
            raise self.fail("a constant too large for a float", node)
        return ("num", value)

    def name(self, node: ast.Name) -> _Node:
        name = _ALIASES.get(node.id, node.id)
        if name in _CONSTANTS:
            return ("const", name)
        if name in self.names:
            return ("var", name)
        if name in FUNCTIONS:
            raise self.fail(f"{node.id!r} is a function: call it, e.g. {node.id}(progress)", node)
        others = [fs for fs, spec in FEATURE_SETS.items() if any(f.name == name for f in spec)]
        hint = f" (a feature of feature set {' and '.join(map(repr, others))}, not of {self.features!r})" if others else ""
        raise self.fail(f"unknown name {node.id!r}{hint}", node)

    def call(self, node: ast.Call, depth: int) -> _Node:
        func = node.func
        if not isinstance(func, ast.Name):
            what = "attribute access is not allowed" if isinstance(func, ast.Attribute) else "only functions named by a bare name can be called"
            raise self.fail(f"{what}: call the functions by their bare names, e.g. exp(x)", node)
        name = _ALIASES.get(func.id, func.id)
        if name not in FUNCTIONS:
            kind = "a variable, not a function" if name in self.names or name in _CONSTANTS else "not an allowed function"
            raise self.fail(f"{func.id!r} is {kind}", node)
        if node.keywords:
            raise self.fail(f"keyword arguments are not allowed (in the call of {func.id})", node)
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(f"starred arguments are not allowed (in the call of {func.id})", node)
        arity = FUNCTIONS[name].arity
        if (arity > 0 and len(node.args) != arity) or (arity < 0 and len(node.args) < -arity):
            wanted = f"{arity} argument{'s' if arity > 1 else ''}" if arity > 0 else f"{-arity} or more arguments"
            raise self.fail(f"{func.id} takes {wanted}, got {len(node.args)}", node)
        return ("call", name, tuple(self.node(arg, depth + 1) for arg in node.args))


def _op_text(op: ast.AST) -> str:
    return {
        ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
        ast.BitXor: "^", ast.BitAnd: "&", ast.Not: "not", ast.Invert: "~",
    }.get(type(op), type(op).__name__)  # fmt: skip


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _evaluate(node: _Node, values: Mapping[str, np.ndarray]) -> np.ndarray:
    kind = node[0]
    if kind == "num":
        return np.float64(node[1])
    if kind == "const":
        return np.float64(_CONSTANTS[node[1]])
    if kind == "var":
        return values[node[1]]
    if kind == "neg":
        return -_evaluate(node[1], values)
    if kind == "pos":
        return _evaluate(node[1], values)
    if kind == "bin":
        op = np.power if node[1] == "**" else _ARITHMETIC[node[1]]
        return op(_evaluate(node[2], values), _evaluate(node[3], values))
    return FUNCTIONS[node[1]].numpy(*(_evaluate(arg, values) for arg in node[2]))


def _sympy_power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``; two numbers with a large or fractional exponent are raised in float64 (no huge exact powers)."""
    import sympy

    if base.is_Number and exponent.is_Number and not (exponent.is_Integer and abs(exponent) <= _BIG_EXPONENT):
        with np.errstate(all="ignore"):
            value = float(np.power(np.float64(float(base)), np.float64(float(exponent))))  # what the numpy evaluation gives
        if math.isnan(value):
            return sympy.nan
        return sympy.Float(value) if math.isfinite(value) else (sympy.oo if value > 0 else -sympy.oo)
    return base**exponent


def _bounded(value: Any) -> Any:
    """A number outside float64's range as numpy has it (±inf, 0): no number sympy must then compute with grows without bound."""
    import sympy

    if not (value.is_Number and value.is_finite) or value.is_zero:
        return value
    if value.is_Float:
        sign, mantissa, exponent, _ = value._mpf_
        log2, negative = exponent + mantissa.bit_length(), bool(sign)
    else:  # Integer, Rational: exact, compared by their bit lengths (no huge conversions)
        log2, negative = abs(value.p).bit_length() - value.q.bit_length(), value.p < 0
    if log2 > _FLOAT_MAX_LOG2:
        return -sympy.oo if negative else sympy.oo
    return sympy.Integer(0) if log2 < _FLOAT_MIN_LOG2 else value


def _to_sympy(node: _Node, symbols: Mapping[str, Any]) -> Any:
    kind = node[0]
    if kind in ("num", "const", "var"):
        return _sympy_leaf(node, symbols)
    return _bounded(_sympy_node(node, symbols))


def _sympy_leaf(node: _Node, symbols: Mapping[str, Any]) -> Any:
    import sympy

    kind = node[0]
    if kind == "num":
        value = node[1]
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)
    if kind == "const":
        return sympy.pi if node[1] == "pi" else sympy.E
    return symbols[node[1]]


def _sympy_node(node: _Node, symbols: Mapping[str, Any]) -> Any:
    kind = node[0]
    if kind == "neg":
        return -_to_sympy(node[1], symbols)
    if kind == "pos":
        return _to_sympy(node[1], symbols)
    if kind == "bin":
        op = _sympy_power if node[1] == "**" else _ARITHMETIC[node[1]]
        return op(_to_sympy(node[2], symbols), _to_sympy(node[3], symbols))
    return FUNCTIONS[node[1]].sympy(*(_to_sympy(arg, symbols) for arg in node[2]))


def _walk(node: _Node) -> Any:
    yield node
    if node[0] in ("neg", "pos"):
        yield from _walk(node[1])
    elif node[0] == "bin":
        yield from _walk(node[2])
        yield from _walk(node[3])
    elif node[0] == "call":
        for arg in node[2]:
            yield from _walk(arg)


@dataclass(frozen=True)
class Formula:
    """A closed-form policy ``α_i / α_base = expression(features)`` (grammar in the module doc).

    Args:
        expression: The expression, in Python syntax.
        features: The feature set whose variables it may use (a key of
            :data:`lrenv.env.features.FEATURE_SETS`).

    Attributes:
        variables: The features it uses, in the feature set's order.
        operations: Its length: binary operators, function calls and unary operators (a sign
            on a number is part of the number), e.g. 4 for ``0.5*(1 + cos(pi*progress))``.

    Raises:
        ValueError: The text is not an expression of the grammar; the message names the
            offending piece and lists what is allowed.
    """

    expression: str
    features: str = "relative"
    variables: tuple[str, ...] = field(init=False, compare=False)
    operations: int = field(init=False, compare=False)
    _tree: _Node = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise TypeError(f"a formula's expression must be a string, got {self.expression!r}")
        if not (isinstance(self.features, str) and self.features in FEATURE_SETS):
            raise ValueError(f"unknown feature set {self.features!r}; choose one of {', '.join(FEATURE_SETS)}")
        text = self.expression.strip()
        if not text:
            raise ValueError("a formula's expression is empty")
        if len(text) > MAX_LENGTH:
            raise ValueError(f"a formula's expression must be at most {MAX_LENGTH} characters, got {len(text)}")
        object.__setattr__(self, "expression", text)
        tree = _Parser(text, self.features).parse()
        used = {node[1] for node in _walk(tree) if node[0] == "var"}
        signed_numbers = sum(1 for node in _walk(tree) if node[0] in ("neg", "pos") and node[1][0] == "num")
        ops = sum(1 for node in _walk(tree) if node[0] in ("bin", "call", "neg", "pos")) - signed_numbers
        object.__setattr__(self, "_tree", tree)
        object.__setattr__(self, "variables", tuple(f.name for f in FEATURE_SETS[self.features] if f.name in used))
        object.__setattr__(self, "operations", ops)

    @classmethod
    def from_string(cls, text: str, features: str = "relative") -> Formula:
        """The formula ``text`` over the feature set ``features``."""
        return cls(text, features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """All features of its feature set, in observation order."""
        return tuple(f.name for f in FEATURE_SETS[self.features])

    def evaluate(self, values: Mapping[str, Any]) -> np.ndarray:
        """The ratio for named feature values (arrays that broadcast together), float64.

        Raises:
            ValueError: A variable the formula uses is missing.
        """
        missing = [name for name in self.variables if name not in values]
        if missing:
            raise ValueError(f"formula {self.expression!r} needs the feature(s) {', '.join(missing)}")
        arrays = {name: np.asarray(values[name], dtype=np.float64) for name in self.variables}
        with np.errstate(all="ignore"):
            out = _evaluate(self._tree, arrays)
        shape = np.broadcast_shapes(*(a.shape for a in arrays.values())) if arrays else ()
        return np.broadcast_to(np.asarray(out, dtype=np.float64), shape).copy()

    def __call__(self, obs: Any) -> np.ndarray:
        """The ratio ``(n,)`` float64 for observations ``(n, n_features)`` (or one, ``(n_features,)``: ``(1,)``)."""
        x = np.asarray(obs, dtype=np.float64)
        names = self.feature_names
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"expected observations of shape (n, {len(names)}) (feature set {self.features!r}), got shape {np.shape(obs)}")
        out = self.evaluate({name: x[:, names.index(name)] for name in self.variables})
        return np.broadcast_to(out, (x.shape[0],)).copy()

    def to_sympy(self) -> Any:
        """The expression as a sympy expression (built from the checked tree, never by parsing text).

        Its symbols are ``sympy.Symbol(name)`` for the variables; ``pi`` and ``e`` are sympy's.
        """
        import sympy

        return _to_sympy(self._tree, {name: sympy.Symbol(name) for name in self.variables})

    def sympy_str(self) -> str:
        """sympy's text of :meth:`to_sympy`, floats at their shortest."""
        import sympy

        return sympy.sstr(self.to_sympy(), full_prec=False)

    def latex(self) -> str:
        """sympy's LaTeX of :meth:`to_sympy`."""
        import sympy

        return sympy.latex(self.to_sympy())

    def __str__(self) -> str:
        return self.expression


class FormulaModel:
    """A formula as an SB3-style model: ``predict(obs) -> (actions, None)`` in multiplier mode.

    Args:
        formula: The formula.
        relative_factor: f: actions ``a = clip(ln(ratio) / ln(f), -1, 1)``, so that
            ``f ** a`` is the ratio clipped to [1/f, f]. NaN and non-positive ratios give -1.
    """

    def __init__(self, formula: Formula, relative_factor: float = DEFAULT_RELATIVE_FACTOR) -> None:
        if not isinstance(formula, Formula):
            raise TypeError(f"FormulaModel needs a Formula, got {formula!r}")
        self.formula = formula
        self.relative_factor = _check_factor(relative_factor, "relative_factor")

    @property
    def observation_space(self) -> Any:
        import gymnasium as gym

        spec = FEATURE_SETS[self.formula.features]
        low = np.array([f.low for f in spec], dtype=np.float32)
        high = np.array([f.high for f in spec], dtype=np.float32)
        return gym.spaces.Box(low, high, dtype=np.float32)

    @property
    def action_space(self) -> Any:
        import gymnasium as gym

        return gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def actions(self, ratio: np.ndarray) -> np.ndarray:
        """Multiplier-mode actions (float64) for ratios: NaN, 0 and negative ratios give -1."""
        with np.errstate(all="ignore"):
            a = np.log(np.asarray(ratio, dtype=np.float64)) / math.log(self.relative_factor)
        return np.where(np.isnan(a), -1.0, np.clip(a, -1.0, 1.0))

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Actions ``(n, 1)`` float32 for observations ``(n, n_features)`` (``(1,)`` for one observation)."""
        x = np.asarray(obs)
        a = self.actions(self.formula(x)).astype(np.float32)
        return (a.reshape(1) if x.ndim == 1 else a.reshape(-1, 1)), None

    def __repr__(self) -> str:
        return f"FormulaModel({self.formula.expression!r}, features={self.formula.features!r}, relative_factor={self.relative_factor})"


def _check_factor(value: Any, what: str) -> float:
    if not (is_real(value) and 1 < to_float(value) < math.inf):
        raise ValueError(f"{what} must be a finite number > 1, got {value!r}")
    return float(value)


def formula_policy(
    formula: Formula | str,
    *,
    features: str = "relative",
    relative_factor: float = DEFAULT_RELATIVE_FACTOR,
    name: str | None = None,
    tasks: Sequence[str] = (),
    task_configs: Mapping[str, Mapping[str, Any]] | None = None,
    path: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> LoadedPolicy:
    """A formula as a :class:`lrenv.policy.LoadedPolicy` (multiplier mode, constant base shape).

    Args:
        formula: A :class:`Formula`, or an expression over ``features``.
        features: The feature set of an expression (a Formula keeps its own).
        relative_factor: f: the ratio is clipped to [1/f, f].
        name: Its label (default: the expression).
        tasks: Tasks it was fitted on; a scheduler defaults to the first one's epochs.
        task_configs: Their resolved :class:`lrenv.TaskConfig` fields (each with ``epochs`` and ``lr_range``).
        path: The file it was read from, if any.
        extra: More entries of its ``config`` (e.g. ``source``, ``fit``).
    """
    if not isinstance(formula, Formula):
        formula = Formula(formula, features)
    model = FormulaModel(formula, relative_factor)
    tasks = list(tasks)
    task_configs = {str(k): dict(v) for k, v in (task_configs or {}).items()}
    missing = [t for t in tasks if t not in task_configs]
    if missing:
        raise ValueError(f"task_configs lacks the settings of task(s) {', '.join(missing)}")
    env = EnvConfig(features=formula.features, action_mode="multiplier", relative_factor=model.relative_factor, base_shape="constant")
    label = formula.expression if name is None else str(name)
    config = {
        **dict(extra or {}),
        "algo": "formula",
        "name": label,
        "expression": formula.expression,
        "env": env.to_dict(),
        "tasks": tasks,
        "task_configs": task_configs,
    }
    where = Path(path) if path is not None else Path(".")
    return LoadedPolicy(model=model, config=config, normalization=None, name=label, path=where, timesteps=None)


# -- formula.json -----------------------------------------------------------------------------

_KNOWN_KEYS = (
    "format", "version", "lrenv", "name", "expression", "sympy", "latex", "features", "variables",
    "relative_factor", "tasks", "task_configs", "domain", "fit", "source",
)  # fmt: skip


@dataclass(frozen=True)
class FormulaFile:
    """The contents of a ``formula.json`` (see the module doc), checked."""

    formula: Formula
    name: str
    relative_factor: float = DEFAULT_RELATIVE_FACTOR
    tasks: tuple[str, ...] = ()
    task_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    path: Path | None = None

    def policy(self) -> LoadedPolicy:
        """The formula as a policy (:func:`formula_policy`)."""
        extra = {"source": self.source, "domain": self.domain, "fit": self.fit}
        return formula_policy(
            self.formula, relative_factor=self.relative_factor, name=self.name, tasks=self.tasks, task_configs=self.task_configs,
            path=self.path, extra=extra,
        )  # fmt: skip


def _json_safe(value: Any, where: str) -> Any:
    """``value`` as plain JSON: dataclasses (a TaskConfig) as dicts, numpy numbers as Python ones, non-finite floats as ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist(), where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{where}: {value!r} ({type(value).__name__}) is not JSON data")


def save_formula(
    path: str | Path,
    formula: Formula | str,
    *,
    name: str = "formula",
    features: str = "relative",
    relative_factor: float = DEFAULT_RELATIVE_FACTOR,
    tasks: Sequence[str] = (),
    task_configs: Mapping[str, Mapping[str, Any]] | None = None,
    domain: Mapping[str, Any] | None = None,
    fit: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> Path:
    """Write a ``formula.json`` atomically (a temporary file renamed into place).

    Args:
        path: The file (a ``.json`` path) or a folder to write ``formula.json`` into.
        formula: A :class:`Formula`, or an expression over ``features``.
        name: Its label in tables.
        features: Feature set of an expression (a Formula keeps its own).
        relative_factor: f, > 1: the ratio is clipped to [1/f, f].
        tasks: Tasks it was fitted on (default for a scheduler's epochs).
        task_configs: Their resolved :class:`lrenv.TaskConfig` s (or their fields as dicts, at
            least ``epochs`` and ``lr_range``), e.g. ``{t: make_task(t).config}``.
        domain: Free-form JSON: where it was fitted (optimizers, epochs, variable ranges).
        fit: Free-form JSON: fit metrics. Non-finite floats are written as ``null``.
        source: What it was distilled from.

    Returns:
        The path written.

    Raises:
        ValueError: A setting is invalid (the same checks :func:`read_formula` makes).
    """
    if not isinstance(formula, Formula):
        formula = Formula(formula, features)
    path = Path(path)
    if path.is_dir():
        path = path / FORMULA_FILE
    data = {
        "format": FORMULA_FORMAT,
        "version": FORMULA_VERSION,
        "lrenv": _version(),
        "name": name,
        "expression": formula.expression,
        "sympy": formula.sympy_str(),
        "latex": formula.latex(),
        "features": formula.features,
        "variables": list(formula.variables),
        "relative_factor": relative_factor,
        "tasks": list(tasks),
        "task_configs": _json_safe(dict(task_configs or {}), "task_configs"),
        "domain": _json_safe(dict(domain or {}), "domain"),
        "fit": _json_safe(dict(fit or {}), "fit"),
        "source": source,
    }
    _check_file(data, path, ValueError)  # what read_formula would refuse is not written
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _version() -> str:
    import lrenv

    return lrenv.__version__


def read_formula(path: str | Path) -> FormulaFile:
    """Read and check a ``formula.json`` (or the one in a folder).

    Raises:
        FileNotFoundError: There is no such file.
        PolicyFileError: It is not valid JSON, not an lrenv formula, of another version, or a
            field is invalid; the message names the file and the field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FORMULA_FILE
    return _check_file(read_json(path), path, PolicyFileError)


def _check_file(data: Any, path: Path, error: type[ValueError]) -> FormulaFile:  # noqa: C901  (one check per field)
    def fail(what: str) -> ValueError:
        return error(f"{path}: {what}")

    if not isinstance(data, dict):
        raise fail(f"must hold a JSON object (an lrenv formula), got {type(data).__name__}")
    missing = [k for k in ("format", "version", "expression", "features") if k not in data]
    if missing:
        raise fail(f"lacks {', '.join(repr(k) for k in missing)}: it is not a complete lrenv formula file")
    if data["format"] != FORMULA_FORMAT:
        raise fail(f"format is {data['format']!r}, not {FORMULA_FORMAT!r}: it is not an lrenv formula file")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(f"version must be a positive integer, got {version!r}")
    if version != FORMULA_VERSION:
        raise fail(f"version {version} (written by lrenv {data.get('lrenv', '?')}); this lrenv {_version()} reads version {FORMULA_VERSION}")
    unknown = sorted(set(data) - set(_KNOWN_KEYS))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(map(repr, unknown))}; a formula file has {', '.join(_KNOWN_KEYS)}")
    features = data["features"]
    if not (isinstance(features, str) and features in FEATURE_SETS):
        raise fail(f"features must be one of {', '.join(FEATURE_SETS)}, got {features!r}")
    if not isinstance(data["expression"], str):
        raise fail(f"expression must be a string, got {data['expression']!r}")
    try:
        formula = Formula(data["expression"], features)
    except ValueError as exc:
        raise fail(f"expression: {exc}") from None
    names = [f.name for f in FEATURE_SETS[features]]
    variables = data.get("variables", list(formula.variables))
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise fail(f"variables must be a list of feature names, got {variables!r}")
    outside = [v for v in variables if v not in names]
    if outside:
        raise fail(f"variables {', '.join(map(repr, outside))} are not features of feature set {features!r} ({', '.join(names)})")
    unlisted = [v for v in formula.variables if v not in variables]
    if unlisted:
        raise fail(f"the expression uses {', '.join(map(repr, unlisted))}, which variables does not list")
    factor = data.get("relative_factor", DEFAULT_RELATIVE_FACTOR)
    try:
        factor = _check_factor(factor, "relative_factor")
    except ValueError as exc:
        raise fail(str(exc)) from None
    task_configs = data.get("task_configs", {})
    if not isinstance(task_configs, dict):
        raise fail(f"task_configs must map task names to their settings, got {task_configs!r}")
    tasks = data.get("tasks", list(task_configs))
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks) or len(set(tasks)) != len(tasks):
        raise fail(f"tasks must be a list of distinct task names, got {tasks!r}")
    for task in tasks:
        config = task_configs.get(task)
        if not isinstance(config, dict):
            raise fail(f"task_configs lacks the settings of task {task!r} (a mapping with at least epochs and lr_range)")
        lacking = [k for k in ("epochs", "lr_range") if k not in config]
        if lacking:
            raise fail(f"task_configs[{task!r}] lacks {', '.join(lacking)}")
        try:
            check_positive_int(config["epochs"], f"task_configs[{task!r}].epochs")
            check_lr_range(config["lr_range"], f"task_configs[{task!r}].lr_range")
        except ValueError as exc:
            raise fail(str(exc)) from None
    extra = {key: data.get(key) for key in ("domain", "fit")}
    for key, value in extra.items():
        if value is not None and not isinstance(value, dict):
            raise fail(f"{key} must be a JSON object, got {value!r}")
    for key in ("name", "source", "sympy", "latex", "lrenv"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise fail(f"{key} must be a string, got {data[key]!r}")
    name = data.get("name") or (path.parent.name if path.name == FORMULA_FILE and path.parent.name else path.stem)
    return FormulaFile(
        formula=formula,
        name=name,
        relative_factor=factor,
        tasks=tuple(tasks),
        task_configs={t: dict(task_configs[t]) for t in tasks},
        domain=dict(extra["domain"] or {}),
        fit=dict(extra["fit"] or {}),
        source=data.get("source"),
        path=path,
    )


def load_formula(path: str | Path) -> LoadedPolicy:
    """The policy of a ``formula.json`` (or of the one in a folder): a :class:`lrenv.policy.LoadedPolicy`.

    Its ``model`` is a :class:`FormulaModel`; its config says ``algo`` ``"formula"``, the env
    settings (the formula's features, ``"multiplier"`` actions with its ``relative_factor``, a
    constant base shape), the tasks and task configs it was fitted on and its name.

    Raises:
        FileNotFoundError: There is no such file.
        PolicyFileError: The file is damaged or invalid (the message names it and the field).
    """
    return read_formula(path).policy()
