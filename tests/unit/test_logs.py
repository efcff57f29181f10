import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import configure_logging, mask_pii


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("phone +7 (912) 345-67-89 called", "phone *******6789 called"),
        ("card 4276123456789012", "card ************9012"),
        ("phone 89123456789", "phone *******6789"),
        ("amount 12345 points, receipt 42", "amount 12345 points, receipt 42"),
        ("id 0b7c1e4e-6a1f-4b2d-9f3a-1d2e3f4a5b6c", "id 0b7c1e4e-6a1f-4b2d-9f3a-1d2e3f4a5b6c"),
        # digits inside identifiers are not PII (an operation id's hex, a UUID's digit-only groups)
        ("op_1382041c2bb548618224853abeb154f6 failed", "op_1382041c2bb548618224853abeb154f6 failed"),
        ("member 8a3b5c7d-1234-5678-9012-345678901234", "member 8a3b5c7d-1234-5678-9012-345678901234"),
        ("card 4276-1234-5678-9012.", "card ************9012."),
    ],
)
def test_phone_and_card_numbers_are_masked(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


def test_log_lines_are_json_with_service_trace_id_and_masked_fields() -> None:
    stream = io.StringIO()
    configure_logging(service="cards", level="INFO", stream=stream)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("resolve") as span:
        logging.getLogger("cards.api").info("resolving %s", "4276123456789012", extra={"phone": "+79123456789"})
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["message"] == "resolving ************9012"
    assert record["phone"] == "*******6789"
    assert record["service"] == "cards"
    assert record["level"] == "INFO"
    assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "time" in record
    logging.getLogger().handlers.clear()
