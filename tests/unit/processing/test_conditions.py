"""Rule conditions (services/processing/domain/conditions.py): what compiles, what it evaluates to.

Every evaluation row is checked twice: on the path the condition normally takes (the Python
translation when `translated`) and on celpy, the reference; both must agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.processing.domain.conditions import (
    CONDITION_MAX_LENGTH,
    ConditionError,
    ConditionEvaluationError,
    ConditionFacts,
    compile_condition,
)

FACTS: dict[str, Any] = {
    "receipt": {
        "total": 150_000,
        "channel": "APP",
        "issue_time": datetime(2024, 5, 15, 8, 59, tzinfo=UTC),
        "lines": [
            {
                "sku": "4601234567890",
                "category_id": "DAIRY",
                "quantity_milli": 2000,
                "amount": 120_000,
                "accrual_excluded": False,
            },
            {
                "sku": "TOBACCO-1",
                "category_id": "TOBACCO",
                "quantity_milli": 1000,
                "amount": 30_000,
                "accrual_excluded": True,
            },
        ],
    },
    "member": {
        "id": "M-1",
        "segments": ["GOLD", "STAFF"],
        "purchase_count": 12,
        "app_purchase_count": 0,
        "birthday_known": True,
        "days_to_birthday": 2,
        "days_since_birthday": 363,
    },
    "outlet": {"id": "O-1", "code": "MSK-01", "region_code": "RU-MOW", "partner_id": "P-1"},
    "terminal": {"id": "T-1"},
    "now": datetime(2024, 5, 15, 9, 0, tzinfo=UTC),
    "local_hour": 12,
    "local_weekday": 3,
}

ERROR = "error"

EVALUATIONS: list[tuple[str, bool | str, bool]] = [
    # (condition, expected result or ERROR, translated)
    ('receipt.channel == "APP" && member.app_purchase_count == 0', True, True),
    ('receipt.lines.exists(l, l.sku == "4601234567890")', True, True),
    ("member.birthday_known && (member.days_to_birthday <= 3 || member.days_since_birthday <= 3)", True, True),
    ("receipt.total >= 100000 && local_weekday in [6, 7]", False, True),
    ('outlet.region_code in ["RU-MOW", "RU-SPE"] && terminal.id != "T-9"', True, True),
    ('"GOLD" in member.segments', True, True),
    ('member.segments.exists(s, s.startsWith("ST"))', True, True),
    ("receipt.lines.all(l, l.quantity_milli >= 1000)", True, True),
    ("receipt.lines.exists_one(l, l.accrual_excluded)", True, True),
    ('size(receipt.lines.filter(l, l.category_id == "DAIRY")) == 1', True, True),
    ("receipt.lines.filter(l, !l.accrual_excluded).size() == 1", True, True),
    ("size(member.segments) > 1 && size(member.id) == 3", True, True),
    ('member.id.contains("-") && outlet.code.endsWith("01")', True, True),
    ('now > timestamp("2024-05-01T00:00:00Z") && receipt.issue_time < now', True, True),
    ("local_hour >= 12 ? member.purchase_count > 10 : false", True, True),
    ("receipt.total / 100 % 7 == 2 && -receipt.total < 0", True, True),
    ("receipt.total * 2 - 300000 == 0", True, True),
    ("has(member.registration_time)", False, True),
    ("has(member.days_to_birthday)", True, True),
    # errors: a missing field, division by zero, int64 overflow
    ("member.registration_time < now", ERROR, True),
    ("receipt.total / (local_hour - 12) > 0", ERROR, True),
    ("receipt.total * 9223372036854775807 > 0", ERROR, True),
    # CEL's commutative && and ||: an error is absorbed by the deciding side
    ("member.registration_time < now && false", False, True),
    ("false && member.registration_time < now", False, True),
    ("member.registration_time < now || true", True, True),
    ("true && member.registration_time < now", ERROR, True),
    ("receipt.lines.exists(l, l.amount / (l.quantity_milli - 1000) > 0)", True, True),
    ("receipt.lines.all(l, l.amount / (l.quantity_milli - 1000) > 0)", ERROR, True),
    ("has(member.registration_time) && member.registration_time < now", False, True),
    # evaluated by celpy (outside the translated subset)
    ("double(receipt.total) > 1000.5", True, False),
    ('member.registration_time > now - duration("720h")', ERROR, False),
    ('receipt.lines[0].sku.matches("^46")', True, False),
    ("receipt.lines.map(l, l.amount).exists(a, a > 100000)", True, False),
    ('outlet.code + "/" + terminal.id == "MSK-01/T-1"', True, False),
    ('(outlet.code + "1").contains("1")', ERROR, False),
    ('{"a": 1}["a"] == 1', True, False),
]


@pytest.mark.parametrize(("text", "expected", "translated"), EVALUATIONS, ids=[row[0] for row in EVALUATIONS])
def test_evaluation(text: str, expected: bool | str, translated: bool) -> None:
    condition = compile_condition(text)
    assert condition.translated is translated
    facts = ConditionFacts(FACTS)
    for evaluate in (condition.evaluate, condition.evaluate_with_celpy):
        if expected == ERROR:
            with pytest.raises(ConditionEvaluationError):
                evaluate(facts)
        else:
            assert evaluate(facts) is expected


COMPILE_ERRORS: list[tuple[str, str]] = [
    ("", "empty"),
    ("   ", "empty"),
    ("x" * (CONDITION_MAX_LENGTH + 1), "longer than 4096"),
    ("receipt.total >", "syntax error: the expression ends too early"),
    ("receipt.total > 1 &&& true", "syntax error: unexpected character '&'"),
    ('receipt.channel == "APP', "syntax error"),
    ("recept.total > 1", "unknown variable 'recept'"),
    ("receipt.totl > 1", "receipt has no field 'totl'"),
    ("member.segment == 1", "member has no field 'segment'"),
    ("receipt.lines.exists(l, l.price > 1)", "line has no field 'price'"),
    ("receipt.total.value > 1", "a int has no field 'value'"),
    ("foo(receipt.total)", "unknown function 'foo'"),
    ("receipt.lines.reduce(r, l, r + 1, 0) > 1", "unknown function 'reduce'"),
    ("receipt.channel.lower() == 'app'", "unknown function 'lower'"),
    ('receipt.total > "100"', "cannot compare int with string"),
    ("receipt.total > 10.5", "cannot compare int with double"),
    ("receipt.channel && true", "&& needs true/false operands"),
    ("!receipt.total", "! needs true/false"),
    ("receipt.total", "must be true or false"),
    ('receipt.channel + 1 == "x"', "+ does not apply to (string, int)"),
    ('"GOLD" in member.id', "'in' needs a list"),
    ("1 in member.segments", "'in' looks for a int in a list(string)"),
    ("receipt.total.exists(x, x > 1)", "exists() applies to lists"),
    ("receipt.lines.exists(l, l.amount)", "must be true or false"),
    ("receipt.lines.exists(1, true)", "must be a variable name"),
    ("size(receipt.total) > 1", "size() does not apply to int"),
    ("has(receipt)", "has() takes a field selection"),
    ("has(member.nickname)", "member has no field 'nickname'"),
    ('timestamp("yesterday") < now', "invalid timestamp"),
    ('now.getHours("Europe/Moscow") > 1 && receipt.total.getHours() > 1', "getHours() applies to timestamps"),
    ("local_hour > 12 ? 1 : 'a'", "different types"),
    (".receipt.total > 1", "leading '.'"),
]


@pytest.mark.parametrize(("text", "message"), COMPILE_ERRORS, ids=[row[0][:60] for row in COMPILE_ERRORS])
def test_compile_errors(text: str, message: str) -> None:
    with pytest.raises(ConditionError) as raised:
        compile_condition(text)
    assert message in str(raised.value)


def test_syntax_errors_have_a_line_and_column() -> None:
    with pytest.raises(ConditionError) as raised:
        compile_condition('receipt.total > 1 &&\n  receipt.channel = "APP"')
    assert (raised.value.line, raised.value.column) == (2, 19)


def test_unknown_names_have_a_line_and_column() -> None:
    with pytest.raises(ConditionError) as raised:
        compile_condition("receipt.total > 1 &&\n   membr.id == 'x'")
    assert (raised.value.line, raised.value.column) == (2, 4)


def test_compiled_conditions_are_cached_by_text() -> None:
    assert compile_condition("receipt.total > 1") is compile_condition("receipt.total > 1")


@pytest.mark.parametrize(
    ("text", "uses_member"),
    [
        ("receipt.total > 1", False),
        ("member.purchase_count == 0", True),
        ('receipt.lines.exists(member, member.sku == "x")', False),
        ('receipt.lines.exists(member, member.sku == "x") || member.id == ""', True),
    ],
)
def test_uses_member(text: str, uses_member: bool) -> None:
    assert compile_condition(text).uses_member is uses_member


def test_without_a_member_the_variable_is_unbound() -> None:
    facts = {name: value for name, value in FACTS.items() if name != "member"}
    condition = compile_condition("member.purchase_count == 0 || receipt.total > 0")
    assert condition.evaluate(facts) is True
    assert condition.evaluate_with_celpy(facts) is True
    strict = compile_condition("member.purchase_count == 0 && receipt.total > 0")
    for evaluate in (strict.evaluate, strict.evaluate_with_celpy):
        with pytest.raises(ConditionEvaluationError):
            evaluate(facts)


def test_macro_variables_do_not_leak_into_the_facts() -> None:
    facts = ConditionFacts(FACTS)
    compile_condition('receipt.lines.exists(receipt, receipt.sku == "TOBACCO-1")').evaluate(facts)
    assert facts.values["receipt"]["total"] == 150_000
    assert compile_condition("receipt.total == 150000").evaluate(facts) is True
