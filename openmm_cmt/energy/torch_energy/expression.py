"""OpenMM's (Lepton) expression language compiled to TorchScript-able torch code.

Grammar and semantics follow Lepton (``openmm/libraries/lepton``, ``Parser.cpp`` and
``Operation.h``), which OpenMM uses for every Custom*Force:

- numbers (``1``, ``.5``, ``2.5e-3``), variables, parentheses, functions ``name(a, b, ...)``;
- binary ``+ -`` (precedence 0), ``* /`` (1), ``^`` (3, right associative), all others left
  associative; unary minus binds at precedence 2, so ``-x^2 = -(x^2)`` and ``-x*y = (-x)*y``;
- ``"main; name1=expr1; name2=expr2"``: the first part is the result, the rest define
  names. Definitions are read from the last to the first, so a definition may use names
  defined after it (and the main expression may use all of them);
- functions sqrt exp log sin cos sec csc tan cot asin acos atan atan2 sinh cosh tanh erf
  erfc step delta square cube recip min max abs floor ceil select, with
  step(x) = 1 if x >= 0 else 0, delta(x) = 1 if x == 0 else 0,
  select(x, y, z) = y if x != 0 else z;
- tabulated functions of the force, called by name (``tabulated``).

``compile_expression`` folds constants (global parameters included), merges repeated
subexpressions, and emits Python source for one ``forward(self, v: List[Tensor])``; the
source is registered with ``linecache`` so that ``torch.jit.script`` can read it, and
``torch.compile`` fuses the straight-line code. Derivatives come from autograd: where
Lepton differentiates ``select`` branch-wise, torch's ``where`` sends zero gradient into the
unselected branch, which is the same unless that branch's own derivative is infinite.
"""

from __future__ import annotations

import hashlib
import linecache
import math
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor


class Node(NamedTuple):
    """One node of an expression tree.

    ``op`` is ``"const"`` (``value`` is the float), ``"var"`` (``value`` is the name),
    ``"neg"``, one of ``+ - * / ^``, or a function name; ``args`` are the operands.
    """

    op: str
    args: tuple = ()
    value: object = None


def const(value: float) -> Node:
    return Node("const", (), float(value))


def var(name: str) -> Node:
    return Node("var", (), name)


# ---------------------------------------------------------------------------------------
# Tokenizer and parser (Lepton's rules)

_OPERATORS = "+-*/^"
_PRECEDENCE = {"+": 0, "-": 0, "*": 1, "/": 1, "^": 3}
_LEFT_ASSOCIATIVE = {"+": True, "-": True, "*": True, "/": True, "^": False}
_NEGATE_PRECEDENCE = 2


class _Token(NamedTuple):
    kind: str  # number, operator, variable, function, "(", ")", ","
    text: str


def _tokenize(text: str) -> List[_Token]:
    tokens = []
    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c.isspace():
            pos += 1
        elif c in "(),":
            tokens.append(_Token(c, c))
            pos += 1
        elif c in _OPERATORS:
            tokens.append(_Token("operator", c))
            pos += 1
        elif c == "." or c.isdigit():
            end = pos + 1
            seen_dot, seen_exp = c == ".", False
            while end < n:
                d = text[end]
                if d.isdigit():
                    end += 1
                elif d == "." and not seen_dot:
                    seen_dot = True
                    end += 1
                elif d in "eE" and not seen_exp:
                    seen_exp = True
                    end += 2 if end + 1 < n and text[end + 1] in "+-" else 1
                else:
                    break
            tokens.append(_Token("number", text[pos:end]))
            pos = end
        else:
            # A name runs until an operator, comma, parenthesis or space; "(" makes it a
            # function call.
            end = pos
            while end < n and not (text[end] in _OPERATORS or text[end] in ",)(" or text[end].isspace()):
                end += 1
            if end < n and text[end] == "(":
                tokens.append(_Token("function", text[pos:end]))
                end += 1
            else:
                tokens.append(_Token("variable", text[pos:end]))
            pos = end
    return tokens


class _Parser:
    def __init__(self, tokens: List[_Token], definitions: Mapping[str, Node]):
        self.tokens = tokens
        self.pos = 0
        self.definitions = definitions

    def fail(self, reason: str):
        raise ValueError(reason)

    def parse(self) -> Node:
        node = self.parse_precedence(0)
        if self.pos != len(self.tokens):
            self.fail(f"unexpected text at end: {self.tokens[self.pos].text!r}")
        return node

    def parse_precedence(self, precedence: int) -> Node:
        if self.pos == len(self.tokens):
            self.fail("unexpected end of expression")
        token = self.tokens[self.pos]
        self.pos += 1
        if token.kind == "number":
            try:
                node = const(float(token.text))
            except ValueError:
                self.fail(f"malformed number {token.text!r}")
        elif token.kind == "variable":
            node = self.definitions.get(token.text, var(token.text))
        elif token.kind == "(":
            node = self.parse_precedence(0)
            self.expect(")")
        elif token.kind == "function":
            args = [self.parse_precedence(0)]
            while self.pos < len(self.tokens) and self.tokens[self.pos].kind == ",":
                self.pos += 1
                args.append(self.parse_precedence(0))
            self.expect(")")
            node = Node(token.text, tuple(args))
        elif token.kind == "operator" and token.text == "-":
            node = Node("neg", (self.parse_precedence(_NEGATE_PRECEDENCE),))
        else:
            self.fail(f"unexpected token {token.text!r}")
        while self.pos < len(self.tokens) and self.tokens[self.pos].kind == "operator":
            op = self.tokens[self.pos].text
            if _PRECEDENCE[op] < precedence:
                break
            self.pos += 1
            right = self.parse_precedence(_PRECEDENCE[op] + (1 if _LEFT_ASSOCIATIVE[op] else 0))
            node = Node(op, (node, right))
        return node

    def expect(self, kind: str):
        if self.pos == len(self.tokens) or self.tokens[self.pos].kind != kind:
            self.fail("unbalanced parentheses")
        self.pos += 1


def parse(expression: str) -> Node:
    """The expression tree of an OpenMM expression, definitions substituted.

    Raises ValueError naming the expression and what is wrong with it.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a string, got {type(expression).__name__}")
    try:
        parts = expression.split(";")
        definitions: Dict[str, Node] = {}
        for part in reversed(parts[1:]):
            if not part.strip():
                continue
            name, eq, body = part.partition("=")
            if not eq or not name.strip():
                raise ValueError(f"definition {part.strip()!r} does not have the form name=expression")
            definitions[name.strip()] = _Parser(_tokenize(body), definitions).parse()
        return _Parser(_tokenize(parts[0]), definitions).parse()
    except ValueError as err:
        raise ValueError(f"cannot parse expression {expression!r}: {err}") from None


# ---------------------------------------------------------------------------------------
# Function table: arity, value on constants (for folding) and torch code


def _numpy(fn):
    # Fold in IEEE float64 as Lepton's C++ does: overflow gives +-inf, domain errors nan.
    def folded(*args):
        with np.errstate(all="ignore"):
            return float(fn(*(np.float64(a) for a in args)))

    return folded


_FOLD = {
    "neg": _numpy(np.negative),
    "+": _numpy(np.add),
    "-": _numpy(np.subtract),
    "*": _numpy(np.multiply),
    "/": _numpy(np.divide),
    "^": _numpy(np.power),
    "sqrt": _numpy(np.sqrt),
    "exp": _numpy(np.exp),
    "log": _numpy(np.log),
    "sin": _numpy(np.sin),
    "cos": _numpy(np.cos),
    "sec": _numpy(lambda a: 1.0 / np.cos(a)),
    "csc": _numpy(lambda a: 1.0 / np.sin(a)),
    "tan": _numpy(np.tan),
    "cot": _numpy(lambda a: 1.0 / np.tan(a)),
    "asin": _numpy(np.arcsin),
    "acos": _numpy(np.arccos),
    "atan": _numpy(np.arctan),
    "atan2": _numpy(np.arctan2),
    "sinh": _numpy(np.sinh),
    "cosh": _numpy(np.cosh),
    "tanh": _numpy(np.tanh),
    "erf": lambda a: math.erf(a),
    "erfc": lambda a: math.erfc(a),
    "step": lambda a: 1.0 if a >= 0 else 0.0,
    "delta": lambda a: 1.0 if a == 0 else 0.0,
    "square": _numpy(lambda a: a * a),
    "cube": _numpy(lambda a: a * a * a),
    "recip": _numpy(lambda a: 1.0 / a),
    "min": lambda a, b: b if b < a else a,
    "max": lambda a, b: b if b > a else a,
    "abs": abs,
    "floor": _numpy(np.floor),
    "ceil": _numpy(np.ceil),
    "select": lambda a, b, c: b if a != 0 else c,
}

# Unary functions as a torch template of one tensor operand.
_UNARY = {
    "neg": "-{0}",
    "sqrt": "torch.sqrt({0})",
    "exp": "torch.exp({0})",
    "log": "torch.log({0})",
    "sin": "torch.sin({0})",
    "cos": "torch.cos({0})",
    "sec": "torch.reciprocal(torch.cos({0}))",
    "csc": "torch.reciprocal(torch.sin({0}))",
    "tan": "torch.tan({0})",
    "cot": "torch.reciprocal(torch.tan({0}))",
    "asin": "torch.asin({0})",
    "acos": "torch.acos({0})",
    "atan": "torch.atan({0})",
    "sinh": "torch.sinh({0})",
    "cosh": "torch.cosh({0})",
    "tanh": "torch.tanh({0})",
    "erf": "torch.erf({0})",
    "erfc": "torch.erfc({0})",
    "step": "({0} >= 0.0).to({0}.dtype)",
    "delta": "({0} == 0.0).to({0}.dtype)",
    "square": "{0} * {0}",
    "cube": "{0} * {0} * {0}",
    "recip": "torch.reciprocal({0})",
    "abs": "torch.abs({0})",
    "floor": "torch.floor({0})",
    "ceil": "torch.ceil({0})",
}

_ARITY = {name: 1 for name in _UNARY}
_ARITY.update({"atan2": 2, "min": 2, "max": 2, "select": 3, "+": 2, "-": 2, "*": 2, "/": 2, "^": 2})

# Point geometry, available to CustomCompoundBondForce (and CustomCentroidBondForce).
_POINT_FUNCTIONS = {"pointdistance": 6, "pointangle": 9, "pointdihedral": 12}

FUNCTIONS = tuple(sorted(name for name in _ARITY if name not in _OPERATORS and name != "neg"))


def _nodes(node: Node) -> List[Node]:
    """Every distinct node of an expression tree (shared subtrees once)."""
    seen, out, stack = set(), [], [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        stack.extend(n.args)
    return out


def variables(node: Node) -> set:
    """Names of the variables an expression tree uses."""
    return {n.value for n in _nodes(node) if n.op == "var"}


def _functions(node: Node) -> set:
    """Names of the functions an expression tree calls."""
    return {n.op for n in _nodes(node) if n.op not in ("const", "var")}


def substitute(node: Node, replace) -> Node:
    """The tree with every node ``n`` for which ``replace(n)`` is not None replaced by
    that result (whose own subtree is not visited)."""
    memo: Dict[int, Node] = {}

    def visit(n: Node) -> Node:
        key = id(n)
        if key in memo:
            return memo[key]
        out = replace(n)
        if out is None:
            out = n if not n.args else Node(n.op, tuple(visit(a) for a in n.args), n.value)
        memo[key] = out
        return out

    return visit(node)


def fold_constants(node: Node, constants: Mapping[str, float]) -> Node:
    """Substitute ``constants`` for variables and evaluate every constant subtree."""
    memo: Dict[int, Node] = {}

    def visit(n: Node) -> Node:
        key = id(n)
        if key in memo:
            return memo[key]
        if n.op == "var":
            out = const(constants[n.value]) if n.value in constants else n
        elif n.op == "const":
            out = n
        else:
            args = tuple(visit(a) for a in n.args)
            if n.op == "select" and args[0].op == "const":
                out = args[1] if args[0].value != 0 else args[2]
            elif all(a.op == "const" for a in args) and n.op in _FOLD:
                out = const(_FOLD[n.op](*(a.value for a in args)))
            else:
                out = Node(n.op, args, n.value)
        memo[key] = out
        return out

    return visit(node)


def check_functions(node: Node, allowed: Sequence[str] = (), tabulated: Optional[Mapping[str, int]] = None) -> None:
    """ValueError naming unknown functions or wrong argument counts; ``tabulated`` gives
    the number of arguments of each tabulated function the expression may call."""
    arity = dict(_ARITY)
    arity.update({name: _POINT_FUNCTIONS[name] for name in allowed if name in _POINT_FUNCTIONS})
    arity.update(tabulated or {})
    allowed = list(allowed) + sorted(tabulated or {})
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op not in ("const", "var"):
            if n.op not in arity:
                raise ValueError(
                    f"unknown function {n.op!r}; known: {', '.join(FUNCTIONS)}"
                    + (f", {', '.join(allowed)}" if allowed else "")
                )
            if len(n.args) != arity[n.op]:
                raise ValueError(f"function {n.op!r} takes {arity[n.op]} arguments, got {len(n.args)}")
        stack.extend(n.args)


# ---------------------------------------------------------------------------------------
# Code generation


def _literal(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else '-float("inf")'
    return repr(float(value))


class _CodeGen:
    """Straight-line TorchScript source; each distinct subtree becomes one temporary."""

    def __init__(self, inputs: Sequence[str], tables: Sequence[str] = ()):
        self.index = {name: k for k, name in enumerate(inputs)}
        self.tables = {name: k for k, name in enumerate(tables)}
        self.lines: List[str] = []
        self.memo: Dict[Node, str] = {}

    def emit(self, code: str) -> str:
        name = f"t{len(self.lines)}"
        self.lines.append(f"    {name} = {code}")
        return name

    def value(self, n: Node) -> str:
        """A float literal for constants, a temporary's name otherwise."""
        if n.op == "const":
            return _literal(n.value)
        if n in self.memo:
            return self.memo[n]
        if n.op == "var":
            out = self.emit(f"v[{self.index[n.value]}]")
        else:
            out = self.emit(self.call(n))
        self.memo[n] = out
        return out

    def tensor(self, n: Node, like: str) -> str:
        if n.op == "const":
            return f"torch.full_like({like}, {_literal(n.value)})"
        return self.value(n)

    def condition(self, n: Node) -> str:
        """A boolean tensor that is true where ``n`` is nonzero."""
        if n.op == "step":
            return f"{self.value(n.args[0])} >= 0.0"
        if n.op == "delta":
            return f"{self.value(n.args[0])} == 0.0"
        return f"{self.value(n)} != 0.0"

    def call(self, n: Node) -> str:
        op, args = n.op, n.args
        if op in _UNARY:
            return _UNARY[op].format(self.value(args[0]))
        if op == "/" and args[0].op == "const":
            # c / x: eager torch computes reciprocal(x) * c anyway; 1 / x needs no multiply.
            recip = f"torch.reciprocal({self.value(args[1])})"
            return recip if args[0].value == 1.0 else f"{recip} * {_literal(args[0].value)}"
        if op in ("+", "-", "*", "/"):
            return f"{self.value(args[0])} {op} {self.value(args[1])}"
        if op == "^":
            base, exponent = args
            if exponent.op == "const":
                if exponent.value == 2.0:
                    b = self.value(base)
                    return f"{b} * {b}"
                return f"torch.pow({self.value(base)}, {_literal(exponent.value)})"
            return f"torch.pow({self.value(base)}, {self.value(exponent)})"
        if op in ("min", "max"):
            a, b = args
            bound = "max" if op == "min" else "min"
            if a.op == "const":
                a, b = b, a
            if b.op == "const":
                return f"torch.clamp({self.value(a)}, {bound}={_literal(b.value)})"
            fn = "torch.minimum" if op == "min" else "torch.maximum"
            return f"{fn}({self.value(a)}, {self.value(b)})"
        if op == "atan2":
            tensor_arg = next(self.value(a) for a in args if a.op != "const")
            return f"torch.atan2({self.tensor(args[0], tensor_arg)}, {self.tensor(args[1], tensor_arg)})"
        if op == "select":
            cond = self.condition(args[0])
            if args[1].op == "const" and args[2].op == "const":
                like = self.value(args[0].args[0] if args[0].op in ("step", "delta") else args[0])
                return f"torch.where({cond}, {self.tensor(args[1], like)}, {_literal(args[2].value)})"
            return f"torch.where({cond}, {self.value(args[1])}, {self.value(args[2])})"
        if op in self.tables:
            tensor_args = [self.value(a) for a in args if a.op != "const"]
            like = tensor_args[0] if tensor_args else "v[0]"
            return f"self.table_{self.tables[op]}([{', '.join(self.tensor(a, like) for a in args)}])"
        if op in _POINT_FUNCTIONS:
            like = next(self.value(a) for a in args if a.op != "const")
            return f"_{op}({', '.join(self.tensor(a, like) for a in args)})"
        raise ValueError(f"no torch code for function {op!r}")


def _vector(xs: List[Tensor]) -> Tensor:
    return torch.stack(torch.broadcast_tensors(xs[0], xs[1], xs[2]), dim=-1)


def _pointdistance(x1: Tensor, y1: Tensor, z1: Tensor, x2: Tensor, y2: Tensor, z2: Tensor) -> Tensor:
    return torch.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2 + (z1 - z2) ** 2)


def _pointangle(
    x1: Tensor, y1: Tensor, z1: Tensor, x2: Tensor, y2: Tensor, z2: Tensor, x3: Tensor, y3: Tensor, z3: Tensor
) -> Tensor:
    a = _vector([x1 - x2, y1 - y2, z1 - z2])
    b = _vector([x3 - x2, y3 - y2, z3 - z2])
    a, b = torch.broadcast_tensors(a, b)
    return _angle_between(a, b)


def _pointdihedral(
    x1: Tensor, y1: Tensor, z1: Tensor, x2: Tensor, y2: Tensor, z2: Tensor,
    x3: Tensor, y3: Tensor, z3: Tensor, x4: Tensor, y4: Tensor, z4: Tensor,
) -> Tensor:  # fmt: skip
    b1 = _vector([x2 - x1, y2 - y1, z2 - z1])
    b2 = _vector([x3 - x2, y3 - y2, z3 - z2])
    b3 = _vector([x4 - x3, y4 - y3, z4 - z3])
    b1, b2, b3 = torch.broadcast_tensors(b1, b2, b3)
    return _dihedral_from_bonds(b1, b2, b3)


def _angle_between(a: Tensor, b: Tensor) -> Tensor:
    """Angle in [0, pi] between vectors along the last dimension, as
    atan2(|a x b|, a . b), which keeps full precision near 0 and pi (acos does not)."""
    return torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(a, b), dim=-1), (a * b).sum(-1))


def _dihedral_from_bonds(b1: Tensor, b2: Tensor, b3: Tensor) -> Tensor:
    """Dihedral angle in [-pi, pi] of the chain with bond vectors b1 = p2-p1, b2 = p3-p2,
    b3 = p4-p3 (IUPAC sign, as OpenMM): atan2(|b2| b1.(b2 x b3), (b1 x b2).(b2 x b3))."""
    n1 = torch.linalg.cross(b1, b2)
    n2 = torch.linalg.cross(b2, b3)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


class CompiledExpression(torch.nn.Module):
    """Base of generated expression modules: ``forward(v)`` evaluates the expression on
    the tensors ``v`` (one per name in ``inputs``, mutually broadcastable) and returns a
    tensor of their broadcast shape (or smaller, when some inputs are unused).

    Attributes: ``inputs`` (names, in order), ``expression`` (as given), ``source``.
    """

    # Plain Python metadata, not part of the TorchScript module.
    __jit_ignored_attributes__ = ["inputs", "expression", "source", "table_names"]

    def __init__(self):
        super().__init__()

    def extra_repr(self) -> str:
        return f"{self.expression!r}, inputs={self.inputs}"

    def __reduce_ex__(self, protocol):
        # Generated classes are not importable: rebuild from the source instead.
        tables = {name: getattr(self, f"table_{k}") for k, name in enumerate(self.table_names)}
        return (_instantiate, (self.source, self.inputs, self.expression, tables))


_CLASSES: Dict[str, type] = {}


def _instantiate(source: str, inputs: tuple, expression: str, tables: Optional[Mapping[str, torch.nn.Module]] = None) -> CompiledExpression:
    cls = _CLASSES.get(source)
    if cls is None:
        digest = hashlib.sha1(source.encode()).hexdigest()[:16]
        filename = f"<openmm_cmt expression {digest}>"
        # torch.jit.script reads source through linecache; an entry without mtime is
        # never invalidated by linecache.checkcache.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = {
            "torch": torch,
            "Tensor": Tensor,
            "List": List,
            "_pointdistance": _pointdistance,
            "_pointangle": _pointangle,
            "_pointdihedral": _pointdihedral,
        }
        exec(compile(source, filename, "exec"), namespace)
        name = f"Expression_{digest}"
        cls = type(name, (CompiledExpression,), {"forward": namespace["forward"], "__module__": __name__, "__qualname__": name})
        _CLASSES[source] = cls
    module = cls()
    module.inputs = tuple(inputs)
    module.expression = expression
    module.source = source
    module.table_names = tuple(tables or {})
    for k, table in enumerate((tables or {}).values()):
        module.add_module(f"table_{k}", table)
    return module


def compile_expression(
    expression: Union[str, Node],
    inputs: Sequence[str],
    constants: Optional[Mapping[str, float]] = None,
    allowed_functions: Sequence[str] = (),
    tabulated: Optional[Mapping[str, tuple]] = None,
) -> CompiledExpression:
    """Compile an OpenMM expression into a TorchScript-able module.

    Parameters
    ----------
    expression
        Lepton source (``"k*(r-r0)^2; k=..."``) or a parsed tree.
    inputs
        names of the variables passed at run time, in the order of ``v``.
    constants
        values of further variables (global parameters), folded in.
    allowed_functions
        extra functions allowed (``pointdistance``, ``pointangle``,
        ``pointdihedral``).
    tabulated
        ``{name: (module, number of arguments)}`` of tabulated functions the
        expression may call; each module maps a list of argument tensors to values
        (see ``tabulated.build_function``).

    Returns
    -------
    torch.nn.Module
        A module with ``forward(v: List[Tensor]) -> Tensor``. A constant expression
        returns a tensor shaped like ``v[0]``.

    Raises
    ------
    ValueError
        Unparsable expression, unknown function, or a variable that is neither an
        input nor a constant.
    """
    text = expression if isinstance(expression, str) else "<tree>"
    node = parse(expression) if isinstance(expression, str) else expression
    inputs = tuple(inputs)
    constants = dict(constants or {})
    tabulated = dict(tabulated or {})
    check_functions(node, allowed_functions, {name: arity for name, (_, arity) in tabulated.items()})
    unknown = sorted(variables(node) - set(inputs) - set(constants))
    if unknown:
        raise ValueError(
            f"expression {text!r} uses undefined variable(s) {', '.join(unknown)}; defined: "
            f"{', '.join(list(inputs) + sorted(constants)) or 'none'}"
        )
    node = fold_constants(node, {k: v for k, v in constants.items() if k not in inputs})
    used = _functions(node)
    tables = {name: module for name, (module, _) in tabulated.items() if name in used}
    gen = _CodeGen(inputs, list(tables))
    if node.op == "const":
        if not inputs:
            raise ValueError(f"expression {text!r} is constant and has no input to take its shape from")
        result = gen.emit(f"torch.full_like(v[0], {_literal(node.value)})")
    else:
        result = gen.value(node)
    source = "def forward(self, v: List[Tensor]) -> Tensor:\n" + "\n".join(gen.lines) + f"\n    return {result}\n"
    return _instantiate(source, inputs, text, tables)
