"""Rule conditions: CEL expressions over a receipt, its member and its outlet.

What it decides: whether an expression an operator typed into `EarningRule.condition` is
acceptable, and whether it holds for one receipt.

* `compile_condition(text)` parses the text (cel-python's grammar), then checks it against the
  variables program_admin.proto documents: an unknown variable, an unknown field of a known
  object, an unknown function or macro, or an operator applied to types that can never match
  (`receipt.total > "100"`, `receipt.channel && true`) is a `ConditionError` with line and
  column, so a typo is refused when the rule is saved instead of making a rule that never
  applies. Results are cached by text.
* `CompiledCondition.evaluate(facts)` returns the boolean result or raises
  `ConditionEvaluationError` (the engine reports RULE_SKIP_REASON_CONDITION_ERROR).

Why it looks like this: cel-python is the reference semantics, but one celpy evaluation costs
about a millisecond, too much for the purchase hot path. The checker therefore also translates
the subset real programs write (literals, field access, comparisons, `&&`, `||`, `!`, `?:`,
`in` on lists, int arithmetic, string contains/startsWith/endsWith, `size`, `has`,
`exists`/`all`/`exists_one`/`filter` over lists, `timestamp("...")`/`duration("...")`
constants) into Python closures that reproduce celpy's results, including its error
semantics (`false && <error>` is false, `true || <error>` is true, int64 overflow and division
by zero are errors, integer division truncates toward zero). An expression using anything else
(doubles, uints, maps, indexing, conversions, regular expressions, time arithmetic, ...) is
evaluated by celpy as a whole. (String `+` is left to celpy on purpose: celpy's concatenation
yields a plain str on which `.contains()` is an error, a quirk not worth reproducing.)
`CompiledCondition.translated` says which path is taken;
tests/unit/processing/test_conditions_equivalence.py compares both paths on generated
expressions and facts.

Variables (money in int minor units, times as timestamps):
  receipt.total, receipt.channel ("POS" | "ONLINE" | "APP"), receipt.issue_time,
  receipt.lines (list of {sku, category_id, quantity_milli, amount, accrual_excluded});
  member.id, member.segments, member.registration_time, member.purchase_count,
  member.app_purchase_count, member.birthday_known, member.days_to_birthday,
  member.days_since_birthday; outlet.id, outlet.code, outlet.region_code, outlet.partner_id;
  terminal.id; now, local_hour, local_weekday.
Fields whose value is unknown are absent: member.registration_time without a registration time,
member.days_to_birthday / days_since_birthday without a birth date. Reading an absent field is
an evaluation error, `has(member.registration_time)` tells whether it is known. Without a member
`member` is not bound at all; the engine skips rules whose condition names `member`
(`CompiledCondition.uses_member`) with RULE_SKIP_REASON_MEMBER_REQUIRED before evaluating.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, celstr

__all__ = [
    "CONDITION_MAX_LENGTH",
    "CompiledCondition",
    "ConditionError",
    "ConditionEvaluationError",
    "ConditionFacts",
    "compile_condition",
]

CONDITION_MAX_LENGTH = 4096
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class ConditionError(ValueError):
    """The condition does not compile; `message` is meant for the operator."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        where = f" (line {line}, column {column})" if line is not None and column is not None else ""
        super().__init__(f"{message}{where}")
        self.message = message
        self.line = line
        self.column = column


class ConditionEvaluationError(Exception):
    """The condition could not be evaluated for these facts (counts as false)."""


# ---------------------------------------------------------------------------------------------
# Types of the variables
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Type:
    name: str  # int, uint, double, string, bool, bytes, timestamp, duration, list, object, dyn, null
    elem: _Type | None = None  # list element
    obj: str = ""  # object name: receipt, line, member, outlet, terminal

    def __str__(self) -> str:
        if self.name == "list":
            return f"list({self.elem})"
        if self.name == "object":
            return self.obj
        return self.name


_INT = _Type("int")
_UINT = _Type("uint")
_DOUBLE = _Type("double")
_STRING = _Type("string")
_BOOL = _Type("bool")
_BYTES = _Type("bytes")
_NULL = _Type("null")
_TIMESTAMP = _Type("timestamp")
_DURATION = _Type("duration")
_DYN = _Type("dyn")


def _obj(name: str) -> _Type:
    return _Type("object", obj=name)


def _list(elem: _Type) -> _Type:
    return _Type("list", elem=elem)


# object -> field -> (type, always present)
_FIELDS: Mapping[str, Mapping[str, tuple[_Type, bool]]] = {
    "receipt": {
        "total": (_INT, True),
        "channel": (_STRING, True),
        "issue_time": (_TIMESTAMP, True),
        "lines": (_list(_obj("line")), True),
    },
    "line": {
        "sku": (_STRING, True),
        "category_id": (_STRING, True),
        "quantity_milli": (_INT, True),
        "amount": (_INT, True),
        "accrual_excluded": (_BOOL, True),
    },
    "member": {
        "id": (_STRING, True),
        "segments": (_list(_STRING), True),
        "registration_time": (_TIMESTAMP, False),
        "purchase_count": (_INT, True),
        "app_purchase_count": (_INT, True),
        "birthday_known": (_BOOL, True),
        "days_to_birthday": (_INT, False),
        "days_since_birthday": (_INT, False),
    },
    "outlet": {
        "id": (_STRING, True),
        "code": (_STRING, True),
        "region_code": (_STRING, True),
        "partner_id": (_STRING, True),
    },
    "terminal": {"id": (_STRING, True)},
}

_VARIABLES: Mapping[str, _Type] = {
    "receipt": _obj("receipt"),
    "member": _obj("member"),
    "outlet": _obj("outlet"),
    "terminal": _obj("terminal"),
    "now": _TIMESTAMP,
    "local_hour": _INT,
    "local_weekday": _INT,
}

# The CEL standard functions celpy implements; all but `has` and `size` are left to celpy.
_GLOBAL_FUNCTIONS: Mapping[str, _Type] = {
    "size": _INT,
    "has": _BOOL,
    "timestamp": _TIMESTAMP,
    "duration": _DURATION,
    "int": _INT,
    "uint": _UINT,
    "double": _DOUBLE,
    "string": _STRING,
    "bool": _BOOL,
    "bytes": _BYTES,
    "dyn": _DYN,
    "type": _DYN,
    "matches": _BOOL,
    "contains": _BOOL,
    "startsWith": _BOOL,
    "endsWith": _BOOL,
}
_TIME_METHODS = frozenset(
    {
        "getDate",
        "getDayOfMonth",
        "getDayOfWeek",
        "getDayOfYear",
        "getFullYear",
        "getMonth",
        "getHours",
        "getMilliseconds",
        "getMinutes",
        "getSeconds",
    }
)
_STRING_METHODS = frozenset({"contains", "startsWith", "endsWith", "matches", "size"})
_MACROS = frozenset({"exists", "all", "exists_one", "filter", "map"})


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------


class ConditionFacts:
    """The variables of one evaluation, as plain Python values.

    `values` maps variable names to ints, strs, bools, aware datetimes, lists and dicts (objects
    are dicts keyed by field name; an unknown field is left out). Built once per receipt and
    shared by every rule's condition; the celpy form is built only if a condition needs it.
    """

    __slots__ = ("_activation", "values")

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values: dict[str, Any] = dict(values)
        self._activation: dict[str, Any] | None = None

    def activation(self) -> dict[str, Any]:
        if self._activation is None:
            self._activation = {name: _to_cel(value) for name, value in self.values.items()}
        return self._activation


def _to_cel(value: Any) -> Any:
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("condition facts need aware datetimes")
        return celtypes.TimestampType(value.astimezone(dt.UTC))
    if isinstance(value, dt.timedelta):
        return celtypes.DurationType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _to_cel(v) for k, v in value.items()})
    if isinstance(value, Sequence):
        return celtypes.ListType([_to_cel(v) for v in value])
    raise TypeError(f"unsupported condition fact {value!r}")


# ---------------------------------------------------------------------------------------------
# Compiled conditions
# ---------------------------------------------------------------------------------------------

_Tree = lark.Tree[Any]
_Env = dict[str, Any]
_Fn = Callable[[_Env], Any]


class _CelError(Exception):
    """An evaluation error inside translated code (CEL's error value)."""


@dataclass(frozen=True)
class CompiledCondition:
    """A condition ready to evaluate. Immutable and shared (compile_condition caches it)."""

    text: str
    # True when the expression names `member`: it needs an identified member.
    uses_member: bool
    # True when the fast Python translation is used; False: celpy evaluates it.
    translated: bool
    _fn: _Fn | None = field(repr=False, compare=False)
    _needs_copy: bool = field(repr=False, compare=False)
    _program: Any = field(repr=False, compare=False)

    def evaluate(self, facts: ConditionFacts | Mapping[str, Any]) -> bool:
        if not isinstance(facts, ConditionFacts):
            facts = ConditionFacts(facts)
        if self._fn is not None:
            env = dict(facts.values) if self._needs_copy else facts.values
            try:
                result = self._fn(env)
            except _CelError as error:
                raise ConditionEvaluationError(str(error)) from None
            except RecursionError:
                raise ConditionEvaluationError("the condition is nested too deeply") from None
            if not isinstance(result, bool):  # the checker guarantees bool; kept under -O
                raise ConditionEvaluationError(f"the condition gave {result!r}, not a bool")
            return result
        return self.evaluate_with_celpy(facts)

    def evaluate_with_celpy(self, facts: ConditionFacts | Mapping[str, Any]) -> bool:
        """The reference evaluation (celpy), whatever `translated` says."""
        if not isinstance(facts, ConditionFacts):
            facts = ConditionFacts(facts)
        try:
            result = self._program.evaluate(facts.activation())
        except CELEvalError as error:
            raise ConditionEvaluationError(_cel_error_text(error)) from None
        except Exception as error:  # celpy raises assorted Python errors for bad operands
            raise ConditionEvaluationError(f"{type(error).__name__}: {error}") from None
        if isinstance(result, CELEvalError):
            raise ConditionEvaluationError(_cel_error_text(result))
        if not isinstance(result, celtypes.BoolType):
            raise ConditionEvaluationError(f"the condition gave {result!r}, not a bool")
        return bool(result)


def _cel_error_text(error: CELEvalError) -> str:
    return str(error.args[0]) if error.args else "evaluation error"


_ENVIRONMENT = celpy.Environment()


@functools.lru_cache(maxsize=8192)
def compile_condition(text: str) -> CompiledCondition:
    """Compiles a condition; raises ConditionError. Cached by text."""
    if not text.strip():
        raise ConditionError("the condition is empty")
    if len(text) > CONDITION_MAX_LENGTH:
        raise ConditionError(f"the condition is longer than {CONDITION_MAX_LENGTH} characters")
    try:
        tree = _ENVIRONMENT.compile(text)
    except CELParseError as error:
        raise ConditionError(_syntax_message(error), line=error.line, column=error.column) from None
    except lark.exceptions.LarkError as error:
        raise ConditionError(f"syntax error: {error}") from None
    except RecursionError:
        raise ConditionError("the condition is nested too deeply") from None
    translator = _Translator()
    try:
        node = translator.visit(tree, {})
    except RecursionError:
        raise ConditionError("the condition is nested too deeply") from None
    if node.type not in (_BOOL, _DYN):
        raise ConditionError(f"the condition must be true or false, not a value of type {node.type}", line=1, column=1)
    program = _ENVIRONMENT.program(tree)
    return CompiledCondition(
        text=text,
        uses_member=translator.uses_member,
        translated=node.fn is not None,
        _fn=node.fn,
        _needs_copy=translator.binds_variables,
        _program=program,
    )


def _syntax_message(error: CELParseError) -> str:
    cause = error.__context__  # the parser's own exception
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        if cause.token.type == "$END":
            return "syntax error: the expression ends too early"
        return f"syntax error: unexpected {cause.token.value!r}"
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        return f"syntax error: unexpected character {cause.char!r}"
    return "syntax error"


# ---------------------------------------------------------------------------------------------
# Checking and translating the CEL parse tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    type: _Type
    fn: _Fn | None  # None: not translated (celpy evaluates the whole condition)
    const: bool = False  # fn ignores the environment
    # Whether fn may raise _CelError for some facts (conservatively True unless shown otherwise).
    can_fail: bool = True


def _const(type_: _Type, value: Any) -> _Node:
    return _Node(type_, lambda env: value, const=True, can_fail=False)


def _fails(*nodes: _Node) -> bool:
    return any(node.can_fail for node in nodes)


def _checked_int(value: int) -> int:
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    raise _CelError("int64 overflow")


_COMPARISONS: Mapping[str, str] = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
    "relation_in": "in",
}
_ORDERED = frozenset({"int", "string", "timestamp", "duration"})
_EQUATABLE = frozenset({"int", "string", "bool", "timestamp", "duration"})


class _Translator:
    """One pass over the parse tree: checks names and types, and builds closures."""

    def __init__(self) -> None:
        self.uses_member = False
        self.binds_variables = False

    def fail(self, tree: _Tree, message: str) -> ConditionError:
        meta = getattr(tree, "meta", None)
        line = getattr(meta, "line", None) if meta is not None and not meta.empty else None
        column = getattr(meta, "column", None) if meta is not None and not meta.empty else None
        return ConditionError(message, line=line, column=column)

    def visit(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        method = getattr(self, f"_{tree.data}", None)
        if method is None:
            raise self.fail(tree, f"unsupported construct {tree.data}")
        node: _Node = method(tree, scope)
        return node

    def _sub(self, tree: _Tree, index: int, scope: Mapping[str, _Type]) -> _Node:
        child = tree.children[index]
        if not isinstance(child, lark.Tree):
            raise self.fail(tree, "unexpected token")
        return self.visit(child, scope)

    # -- boolean structure -----------------------------------------------------------------

    def _expr(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        cond = self._sub(tree, 0, scope)
        left = self._sub(tree, 1, scope)
        right = self._sub(tree, 2, scope)
        self.expect_bool(tree, cond, "?:")
        result_type = left.type if left.type == right.type else _DYN
        if left.type != right.type and _DYN not in (left.type, right.type):
            raise self.fail(tree, f"the branches of ?: have different types ({left.type}, {right.type})")
        if cond.fn is None or left.fn is None or right.fn is None or result_type == _DYN:
            return _Node(result_type, None)
        c, a, b = cond.fn, left.fn, right.fn
        return _Node(result_type, lambda env: a(env) if c(env) else b(env), can_fail=_fails(cond, left, right))

    def _conditionalor(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        left = self._sub(tree, 0, scope)
        right = self._sub(tree, 1, scope)
        self.expect_bool(tree, left, "||")
        self.expect_bool(tree, right, "||")
        if left.fn is None or right.fn is None or _DYN in (left.type, right.type):
            return _Node(_BOOL, None)
        a, b = left.fn, right.fn

        def or_(env: _Env) -> bool:
            try:
                first = a(env)
            except _CelError:
                if b(env) is True:
                    return True
                raise
            if first is True:
                return True
            result: bool = b(env)
            return result

        return _Node(_BOOL, or_, can_fail=_fails(left, right))

    def _conditionaland(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        left = self._sub(tree, 0, scope)
        right = self._sub(tree, 1, scope)
        self.expect_bool(tree, left, "&&")
        self.expect_bool(tree, right, "&&")
        if left.fn is None or right.fn is None or _DYN in (left.type, right.type):
            return _Node(_BOOL, None)
        a, b = left.fn, right.fn

        def and_(env: _Env) -> bool:
            try:
                first = a(env)
            except _CelError:
                if b(env) is False:
                    return False
                raise
            if first is False:
                return False
            result: bool = b(env)
            return result

        return _Node(_BOOL, and_, can_fail=_fails(left, right))

    def expect_bool(self, tree: _Tree, node: _Node, operator: str) -> None:
        if node.type not in (_BOOL, _DYN):
            raise self.fail(tree, f"{operator} needs true/false operands, got {node.type}")

    # -- relations ---------------------------------------------------------------------------

    def _relation(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        op_tree = tree.children[0]
        if not isinstance(op_tree, lark.Tree):
            raise self.fail(tree, "unexpected token")
        operator = _COMPARISONS[str(op_tree.data)]
        left = self._sub(op_tree, 0, scope)
        right = self._sub(tree, 1, scope)
        if operator == "in":
            return self.membership(tree, left, right)
        return self.comparison(tree, operator, left, right)

    def comparison(self, tree: _Tree, operator: str, left: _Node, right: _Node) -> _Node:
        lt, rt = left.type, right.type
        if _DYN in (lt, rt) or _NULL in (lt, rt):
            return _Node(_BOOL, None)
        if lt != rt:
            raise self.fail(tree, f"cannot compare {lt} with {rt} using {operator}")
        supported = _EQUATABLE if operator in ("==", "!=") else _ORDERED
        if lt.name not in supported or left.fn is None or right.fn is None:
            if operator not in ("==", "!=") and lt.name in ("list", "object"):
                raise self.fail(tree, f"{operator} does not apply to {lt}")
            return _Node(_BOOL, None)
        a, b = left.fn, right.fn
        fn: _Fn
        if operator == "==":
            fn = lambda env: a(env) == b(env)  # noqa: E731
        elif operator == "!=":
            fn = lambda env: a(env) != b(env)  # noqa: E731
        elif operator == "<":
            fn = lambda env: a(env) < b(env)  # noqa: E731
        elif operator == "<=":
            fn = lambda env: a(env) <= b(env)  # noqa: E731
        elif operator == ">":
            fn = lambda env: a(env) > b(env)  # noqa: E731
        else:
            fn = lambda env: a(env) >= b(env)  # noqa: E731
        return _Node(_BOOL, fn, can_fail=_fails(left, right))

    def membership(self, tree: _Tree, item: _Node, container: _Node) -> _Node:
        ct = container.type
        if ct == _DYN or item.type == _DYN:
            return _Node(_BOOL, None)
        if ct.name != "list":
            if ct.name in ("object",):
                return _Node(_BOOL, None)
            raise self.fail(tree, f"'in' needs a list on the right, got {ct}")
        elem = ct.elem or _DYN
        if elem != _DYN and elem != item.type:
            raise self.fail(tree, f"'in' looks for a {item.type} in a {ct}")
        if item.fn is None or container.fn is None or item.type.name not in _EQUATABLE:
            return _Node(_BOOL, None)
        a, b = item.fn, container.fn
        if container.const:
            frozen = frozenset(b({}))
            return _Node(_BOOL, lambda env: a(env) in frozen, can_fail=item.can_fail)
        return _Node(_BOOL, lambda env: a(env) in b(env), can_fail=_fails(item, container))

    # -- arithmetic --------------------------------------------------------------------------

    def _addition(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        op_tree = tree.children[0]
        if not isinstance(op_tree, lark.Tree):
            raise self.fail(tree, "unexpected token")
        left = self._sub(op_tree, 0, scope)
        right = self._sub(tree, 1, scope)
        operator = "+" if op_tree.data == "addition_add" else "-"
        return self.arithmetic(tree, operator, left, right)

    def _multiplication(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        op_tree = tree.children[0]
        if not isinstance(op_tree, lark.Tree):
            raise self.fail(tree, "unexpected token")
        left = self._sub(op_tree, 0, scope)
        right = self._sub(tree, 1, scope)
        operator = {"multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%"}[str(op_tree.data)]
        return self.arithmetic(tree, operator, left, right)

    def arithmetic(self, tree: _Tree, operator: str, left: _Node, right: _Node) -> _Node:
        lt, rt = left.type, right.type
        if _DYN in (lt, rt):
            return _Node(_DYN, None)
        result = _arithmetic_type(operator, lt, rt)
        if result is None:
            raise self.fail(tree, f"{operator} does not apply to ({lt}, {rt})")
        if left.fn is None or right.fn is None:
            return _Node(result, None)
        a, b = left.fn, right.fn
        if lt == _INT and rt == _INT:
            return _Node(_INT, _int_operation(operator, a, b))
        return _Node(result, None)

    def _unary(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        if len(tree.children) == 1:
            return self._sub(tree, 0, scope)
        op_tree = tree.children[0]
        operand = self._sub(tree, 1, scope)
        if not isinstance(op_tree, lark.Tree):
            raise self.fail(tree, "unexpected token")
        if operand.type == _DYN:
            return _Node(_DYN, None)
        f = operand.fn
        if op_tree.data == "unary_not":
            if operand.type != _BOOL:
                raise self.fail(tree, f"! needs true/false, got {operand.type}")
            return _Node(_BOOL, None if f is None else (lambda env: not f(env)), can_fail=operand.can_fail)
        if operand.type not in (_INT, _DOUBLE, _DURATION):
            raise self.fail(tree, f"- does not apply to {operand.type}")
        if operand.type != _INT or f is None:
            return _Node(operand.type, None)
        return _Node(_INT, lambda env: _checked_int(-f(env)))

    # -- members, calls ----------------------------------------------------------------------

    def _member(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        return self._sub(tree, 0, scope)

    def _primary(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        return self._sub(tree, 0, scope)

    def _paren_expr(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        return self._sub(tree, 0, scope)

    def _ident(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        name = str(tree.children[0])
        if name in scope:
            return _Node(scope[name], lambda env: env[name], can_fail=False)
        if name in _VARIABLES:
            if name == "member":
                self.uses_member = True
            # Every variable but `member` is always bound (see ConditionFacts).
            return _Node(_VARIABLES[name], _variable(name), can_fail=name == "member")
        known = ", ".join(sorted(_VARIABLES))
        raise self.fail(tree, f"unknown variable '{name}' (known: {known})")

    def _dot_ident(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        raise self.fail(tree, "names with a leading '.' are not supported")

    def _dot_ident_arg(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        raise self.fail(tree, "names with a leading '.' are not supported")

    def _member_object(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        raise self.fail(tree, "message construction is not supported")

    def _member_dot(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        target = self._sub(tree, 0, scope)
        name = str(tree.children[1])
        return self.select(tree, target, name)

    def select(self, tree: _Tree, target: _Node, name: str) -> _Node:
        if target.type == _DYN:
            return _Node(_DYN, None)
        if target.type.name != "object":
            raise self.fail(tree, f"a {target.type} has no field '{name}'")
        fields = _FIELDS[target.type.obj]
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise self.fail(tree, f"{target.type.obj} has no field '{name}' (known: {known})")
        field_type, always = fields[name]
        if target.fn is None:
            return _Node(field_type, None)
        get = target.fn

        def select_(env: _Env) -> Any:
            try:
                return get(env)[name]
            except KeyError:
                raise _CelError(f"no such member in mapping: '{name}'") from None

        return _Node(field_type, select_, can_fail=target.can_fail or not always)

    def _member_index(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        target = self._sub(tree, 0, scope)
        index = self._sub(tree, 1, scope)
        if target.type.name == "list":
            if index.type not in (_INT, _UINT, _DYN):
                raise self.fail(tree, f"a list index must be an int, got {index.type}")
            return _Node(target.type.elem or _DYN, None)
        if target.type.name in ("object", "dyn"):
            return _Node(_DYN, None)
        raise self.fail(tree, f"a {target.type} cannot be indexed")

    def _member_dot_arg(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        name = str(tree.children[1])
        args = self.arguments(tree, 2)
        if name in _MACROS:
            return self.macro(tree, name, args, scope)
        if name not in _TIME_METHODS and name not in _STRING_METHODS:
            raise self.fail(tree, f"unknown function '{name}'")
        target = self._sub(tree, 0, scope)
        arg_nodes = [self.visit(arg, scope) for arg in args]
        return self.method(tree, name, target, arg_nodes)

    def arguments(self, tree: _Tree, index: int) -> list[_Tree]:
        if len(tree.children) <= index:
            return []
        exprlist = tree.children[index]
        if not isinstance(exprlist, lark.Tree):
            raise self.fail(tree, "unexpected token")
        return [child for child in exprlist.children if isinstance(child, lark.Tree)]

    def method(self, tree: _Tree, name: str, target: _Node, args: list[_Node]) -> _Node:
        tt = target.type
        if name in _TIME_METHODS:
            if tt not in (_TIMESTAMP, _DURATION, _DYN):
                raise self.fail(tree, f"{name}() applies to timestamps, not {tt}")
            return _Node(_INT, None)
        if name not in _STRING_METHODS:
            raise self.fail(tree, f"unknown function '{name}'")
        if name == "size":
            return self.size(tree, target, args)
        if tt not in (_STRING, _DYN):
            raise self.fail(tree, f"{name}() applies to strings, not {tt}")
        if len(args) != 1:
            raise self.fail(tree, f"{name}() takes one argument")
        if args[0].type not in (_STRING, _DYN):
            raise self.fail(tree, f"{name}() takes a string, got {args[0].type}")
        a, b = target.fn, args[0].fn
        if name == "matches" or a is None or b is None or _DYN in (tt, args[0].type):
            return _Node(_BOOL, None)
        fn: _Fn
        if name == "contains":
            fn = lambda env: b(env) in a(env)  # noqa: E731
        elif name == "startsWith":
            fn = lambda env: a(env).startswith(b(env))  # noqa: E731
        else:
            fn = lambda env: a(env).endswith(b(env))  # noqa: E731
        return _Node(_BOOL, fn, can_fail=_fails(target, args[0]))

    def size(self, tree: _Tree, target: _Node, args: list[_Node]) -> _Node:
        if args:
            raise self.fail(tree, "size() takes no argument here")
        if target.type.name not in ("list", "string", "bytes", "dyn"):
            raise self.fail(tree, f"size() does not apply to {target.type}")
        f = target.fn
        if f is None or target.type.name not in ("list", "string"):
            return _Node(_INT, None)
        return _Node(_INT, lambda env: len(f(env)), can_fail=target.can_fail)

    def macro(self, tree: _Tree, name: str, args: list[_Tree], scope: Mapping[str, _Type]) -> _Node:
        if name == "map" and len(args) == 3:
            raise self.fail(tree, "map() with a filter is not supported; use filter() then map()")
        if len(args) != 2:
            raise self.fail(tree, f"{name}() takes a variable name and an expression")
        variable = _bound_name(args[0])
        if variable is None:
            raise self.fail(tree, f"the first argument of {name}() must be a variable name")
        target = self._sub(tree, 0, scope)
        if target.type.name not in ("list", "dyn"):
            raise self.fail(tree, f"{name}() applies to lists, not {target.type}")
        elem = target.type.elem or _DYN
        body = self.visit(args[1], {**scope, variable: elem})
        self.binds_variables = True
        if name == "map":
            return _Node(_list(body.type), None)
        if body.type not in (_BOOL, _DYN):
            raise self.fail(tree, f"the expression of {name}() must be true or false, not {body.type}")
        result_type = target.type if name == "filter" else _BOOL
        if target.fn is None or body.fn is None or _DYN in (target.type, body.type):
            return _Node(result_type, None)
        if name in ("exists_one", "filter") and body.can_fail:
            # celpy lets an error in these predicates escape every enclosing && and || (it raises
            # instead of returning an error value); only error-free predicates are translated.
            return _Node(result_type, None)
        return _Node(result_type, _macro(name, variable, target.fn, body.fn), can_fail=_fails(target, body))

    def _ident_arg(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        name = str(tree.children[0])
        args = self.arguments(tree, 1)
        if name not in _GLOBAL_FUNCTIONS:
            if name in _MACROS or name in _TIME_METHODS:
                raise self.fail(tree, f"{name}() is called as a method, e.g. list.{name}(...)")
            raise self.fail(tree, f"unknown function '{name}'")
        if name == "has":
            return self.has(tree, args, scope)
        nodes = [self.visit(arg, scope) for arg in args]
        if name == "size":
            if len(nodes) != 1:
                raise self.fail(tree, "size() takes one argument")
            return self.size(tree, nodes[0], [])
        if name in ("contains", "startsWith", "endsWith", "matches"):
            if len(nodes) != 2:
                raise self.fail(tree, f"{name}() takes two arguments")
            return self.method(tree, name, nodes[0], nodes[1:])
        if len(nodes) != 1:
            raise self.fail(tree, f"{name}() takes one argument")
        if name in ("timestamp", "duration"):
            return self.time_constant(tree, name, args[0], nodes[0])
        return _Node(_GLOBAL_FUNCTIONS[name], None)

    def has(self, tree: _Tree, args: list[_Tree], scope: Mapping[str, _Type]) -> _Node:
        selection = _single_member_dot(args[0]) if len(args) == 1 else None
        if selection is None:
            raise self.fail(tree, "has() takes a field selection, e.g. has(member.registration_time)")
        target = self.visit(selection.children[0], scope)  # type: ignore[arg-type]
        name = str(selection.children[1])
        self.select(tree, target, name)  # checks the field exists
        get = target.fn
        if get is None or target.type == _DYN:
            return _Node(_BOOL, None)

        def has_(env: _Env) -> bool:
            try:
                return name in get(env)
            except _CelError:
                return False

        return _Node(_BOOL, has_, can_fail=False)

    def time_constant(self, tree: _Tree, name: str, arg_tree: _Tree, arg: _Node) -> _Node:
        result_type = _TIMESTAMP if name == "timestamp" else _DURATION
        accepted = (_STRING, _DYN, _INT) if name == "timestamp" else (_STRING, _DYN)
        if arg.type not in accepted:
            raise self.fail(tree, f"{name}() takes a string, got {arg.type}")
        if not arg.const or arg.fn is None or arg.type != _STRING:
            return _Node(result_type, None)
        text = arg.fn({})
        try:
            value = celtypes.TimestampType(text) if name == "timestamp" else celtypes.DurationType(text)
        except Exception as error:
            raise self.fail(tree, f"invalid {name} {text!r}: {error}") from None
        if name == "timestamp":
            plain: Any = dt.datetime.fromtimestamp(value.timestamp(), tz=dt.UTC).replace(microsecond=value.microsecond)
            if plain != value:
                return _Node(result_type, None)
        else:
            plain = dt.timedelta(seconds=value.total_seconds())
            if plain != value:
                return _Node(result_type, None)
        return _const(result_type, plain)

    # -- literals ----------------------------------------------------------------------------

    def _literal(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        token = tree.children[0]
        if not isinstance(token, lark.Token):
            raise self.fail(tree, "unexpected literal")
        kind = token.type
        if kind == "INT_LIT":
            try:
                value = int(celtypes.IntType(token.value))
            except ValueError:
                return _Node(_INT, None)
            return _const(_INT, value)
        if kind in ("STRING_LIT", "MLSTRING_LIT"):
            try:
                text = str(celstr(token))
            except Exception:
                return _Node(_STRING, None)
            return _const(_STRING, text)
        if kind == "BOOL_LIT":
            return _const(_BOOL, token.value.lower() == "true")
        if kind == "UINT_LIT":
            return _Node(_UINT, None)
        if kind == "FLOAT_LIT":
            return _Node(_DOUBLE, None)
        if kind == "BYTES_LIT":
            return _Node(_BYTES, None)
        return _Node(_NULL, None)

    def _list_lit(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        items = self.arguments(tree, 0)
        nodes = [self.visit(item, scope) for item in items]
        if not nodes:
            return _const(_list(_DYN), [])
        types = {node.type for node in nodes}
        if len(types) != 1:
            return _Node(_list(_DYN), None)
        elem = types.pop()
        if elem == _DYN or not all(node.const and node.fn is not None for node in nodes):
            return _Node(_list(elem), None)
        values = [node.fn({}) for node in nodes if node.fn is not None]
        return _const(_list(elem), values)

    def _map_lit(self, tree: _Tree, scope: Mapping[str, _Type]) -> _Node:
        for child in tree.children:
            if isinstance(child, lark.Tree):
                for item in child.children:
                    if isinstance(item, lark.Tree):
                        self.visit(item, scope)
        return _Node(_DYN, None)


def _variable(name: str) -> _Fn:
    def variable_(env: _Env) -> Any:
        try:
            return env[name]
        except KeyError:
            raise _CelError(f"undeclared reference to '{name}'") from None

    return variable_


def _arithmetic_type(operator: str, left: _Type, right: _Type) -> _Type | None:
    if left == right and left.name in ("int", "uint", "double"):
        return left if operator in "+-*/" or left.name != "double" else None
    if operator == "+":
        if left == right and left.name in ("string", "bytes", "list", "duration"):
            return left
        if {left.name, right.name} == {"timestamp", "duration"}:
            return _TIMESTAMP
    if operator == "-":
        if left == _TIMESTAMP and right == _TIMESTAMP:
            return _DURATION
        if left == _TIMESTAMP and right == _DURATION:
            return _TIMESTAMP
        if left == _DURATION and right == _DURATION:
            return _DURATION
    return None


def _int_operation(operator: str, a: _Fn, b: _Fn) -> _Fn:
    if operator == "+":
        return lambda env: _checked_int(a(env) + b(env))
    if operator == "-":
        return lambda env: _checked_int(a(env) - b(env))
    if operator == "*":
        return lambda env: _checked_int(a(env) * b(env))

    def divide(env: _Env) -> int:
        x, y = a(env), b(env)
        if y == 0:
            raise _CelError("modulus or divide by zero")
        if operator == "/":
            sign = (-1 if x < 0 else 1) * (-1 if y < 0 else 1)
            return _checked_int(sign * (abs(x) // abs(y)))
        return _checked_int((-1 if x < 0 else 1) * (abs(x) % abs(y)))

    return divide


def _macro(name: str, variable: str, target: _Fn, body: _Fn) -> _Fn:
    """exists/all (with celpy's treatment of errors in the body), exists_one, filter."""

    def outcomes(env: _Env) -> tuple[list[Any], list[bool | None]]:  # None: the body failed
        items = list(target(env))
        missing = object()
        saved = env.get(variable, missing)
        results: list[bool | None] = []
        try:
            for item in items:
                env[variable] = item
                try:
                    results.append(body(env))
                except _CelError:
                    results.append(None)
        finally:
            if saved is missing:
                env.pop(variable, None)
            else:
                env[variable] = saved
        return items, results

    if name == "exists":

        def exists_(env: _Env) -> bool:
            _, results = outcomes(env)
            if True in results:
                return True
            if None in results:
                raise _CelError("exists: error in the predicate")
            return False

        return exists_
    if name == "all":

        def all_(env: _Env) -> bool:
            _, results = outcomes(env)
            if False in results:
                return False
            if None in results:
                raise _CelError("all: error in the predicate")
            return True

        return all_
    # exists_one and filter: only translated with predicates that cannot fail (see macro()).
    if name == "exists_one":
        return lambda env: sum(1 for r in outcomes(env)[1] if r is True) == 1

    def filter_(env: _Env) -> list[Any]:
        items, results = outcomes(env)
        return [item for item, r in zip(items, results, strict=True) if r is True]

    return filter_


def _bound_name(tree: _Tree) -> str | None:
    """The identifier of a macro's first argument (an expr that is just a name)."""
    node: Any = tree
    while isinstance(node, lark.Tree) and len(node.children) == 1 and node.data != "ident":
        node = node.children[0]
    if isinstance(node, lark.Tree) and node.data == "ident":
        return str(node.children[0])
    return None


def _single_member_dot(tree: _Tree) -> _Tree | None:
    node: Any = tree
    while isinstance(node, lark.Tree) and len(node.children) == 1 and node.data != "member_dot":
        node = node.children[0]
    if isinstance(node, lark.Tree) and node.data == "member_dot":
        return node
    return None
