"""Hostile HL7 v2 bytes: every input maps or fails with MessageError, and gets an ACK."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.events import DeadLetterReason
from streams.gateway.hl7_ack import build_ack
from streams.gateway.hl7_map import MappingOptions, map_hl7
from streams.gateway.hl7_parse import parse_hl7
from vigil.errors import MessageError

_VALID = (
    b"MSH|^~\\&|MON|ICU|VIGIL|HOSP|20250101120005+0000||ORU^R01|MSG1|P|2.5\r"
    b"PID|1||1234^^^HOSP^MR\rOBR|1|||P|||20250101120000+0000\r"
    b"OBX|1|NM|8867-4^Heart rate^LN||80|/min^^UCUM|||||F\r"
    b"OBX|2|NM|2524-7^Lactate^LN||2.1|mmol/L|||||F|||20250101121500+0000\r"
)
_ADT = (
    b"MSH|^~\\&|ADT|HOSP|VIGIL|HOSP|20250101120000+0000||ADT^A01|ADT1|P|2.3\r"
    b"EVN|A01|20250101120000+0000\rPID|1||1234||Doe^Jane||19500601|F\r"
    b"PV1|1|I|MICU^12^1||||||||MED\rOBX|1|NM|29463-7^Weight^LN||70|kg\r"
)
_OPTIONS = MappingOptions(max_message_bytes=4096)
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_ALPHABET = b"|^~\\&\r\n0123456789.+-ANMXOBRPIDSHV \x00\xff\x0b\x1c"


def _mutations() -> st.SearchStrategy[bytes]:
    def mutate(base: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(base)
        for position, length, replacement in edits:
            at = position % (len(data) + 1)
            data[at : at + length] = replacement
        return bytes(data)

    edit = st.tuples(
        st.integers(0, 1000),
        st.integers(0, 8),
        st.binary(max_size=6) | st.sampled_from([bytes([c]) for c in _ALPHABET]),
    )
    return st.builds(mutate, st.sampled_from([_VALID, _ADT]), st.lists(edit, max_size=6))


def _shuffled() -> st.SearchStrategy[bytes]:
    segments = [s for s in (_VALID + _ADT).split(b"\r") if s]
    return st.permutations(segments).map(lambda s: b"\r".join(s[:5]))


def _check(raw: bytes) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    reason: str | None = None
    try:
        mapped = map_hl7(raw, _OPTIONS)
    except MessageError as exc:
        reason = exc.reason
        try:
            message = parse_hl7(raw, max_bytes=_OPTIONS.max_message_bytes)
        except MessageError:
            message = None
        ack = build_ack(
            message, "AE", control_id=exc.control_id, ack_id="a", now=now, text=str(exc)
        )
    else:
        assert mapped.events
        ack = build_ack(None, "AA", control_id=mapped.control_id, ack_id="a", now=now)
    assert hl7.parse(ack.decode()).segment("MSA")
    assert reason is None or reason in set(DeadLetterReason)


@_SETTINGS
@given(st.binary(max_size=600) | _mutations() | _shuffled())
def test_hostile_bytes_are_mapped_or_rejected(raw: bytes) -> None:
    _check(raw)


@_SETTINGS
@given(st.text(alphabet=st.sampled_from("|^~\\&\rMSHPIDOBXR0123456789."), max_size=300))
def test_hostile_text_is_mapped_or_rejected(text: str) -> None:
    _check(b"MSH|^~\\&|A|B|C|D|20250101120000+0000||ORU^R01|X|P|2.5\r" + text.encode())
