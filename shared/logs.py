"""Structured JSON logs: one object per line, with service, trace and span ids, PII masked.

Phone numbers and card numbers are masked wherever they appear in a message or a string field
(any run of 9 or more digits, optionally with the separators people type in phone numbers:
all but the last 4 digits become '*'). Ids and amounts are shorter or contain letters.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

# A run of at least 9 digits, allowing '+', spaces, dashes, dots and parentheses between them,
# standing on its own: digits inside an identifier (an operation id's hex, a UUID) are not PII.
_LONG_NUMBER = re.compile(r"(?<![A-Za-z0-9_-])\+?\d(?:[\s\-.()]*\d){8,}(?![A-Za-z0-9_-])")
# Attributes every LogRecord has; anything else came from `extra=` and is ours to mask.
_STANDARD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def mask_pii(text: str) -> str:
    """'+7 (912) 345-67-89' -> '*********6789' ; '4276123456789012' -> '************9012'."""

    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        return "*" * (len(digits) - 4) + digits[-4:]

    return _LONG_NUMBER.sub(mask, text)


class ContextFilter(logging.Filter):
    """Adds service, trace_id and span_id; masks PII in the message and string extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_pii(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRIBUTES and isinstance(value, str):
                setattr(record, key, mask_pii(value))
        record.service = self.service
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def configure_logging(*, service: str, level: str, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
        )
    )
    handler.addFilter(ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
