"""HL7 v2 ACK messages (original mode): AA, AE with the reason, AR. Pure: no I/O.

The ACK swaps the sender and receiver of MSH-3..6, copies the trigger event, processing id
and version, and carries the acknowledged MSH-10 in MSA-2. AE and AR carry the reason in
MSA-3 (text, escaped) and an ERR segment (ERR-3 HL7 error code, ERR-4 severity ``E``,
ERR-8 the text), so that both v2.3 and v2.5+ interface engines show it. A message too
broken to parse still gets an ACK, addressed from the defaults below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import hl7
from hl7.containers import Message

from streams.gateway.hl7_parse import field_text

__all__ = ["AckCode", "build_ack"]

AckCode = Literal["AA", "AE", "AR"]

_DEFAULT_HEADER: Final = "MSH|^~\\&|||||||ACK|0|P|2.5"
# HL7 table 0357: 207 application internal error, 100 segment sequence error.
_ERROR_CODES: Final = {"AE": "207^Application internal error^HL70357", "AR": "207^^HL70357"}
_MAX_TEXT: Final = 200
# The ACK uses the standard delimiters, whatever the message used: escape for those.
_ESCAPER: Final = hl7.parse(_DEFAULT_HEADER)
_DELIMITERS: Final = frozenset("|^~\\&")


def _escape(text: str) -> str:
    # Most header fields are printable ASCII without a delimiter, which python-hl7's escape
    # returns unchanged: it runs only for the others (delimiters, control, non-ASCII).
    if text.isascii() and text.isprintable() and _DELIMITERS.isdisjoint(text):
        return text
    return str(_ESCAPER.escape(text))


def build_ack(
    message: Message | None,
    code: AckCode,
    *,
    control_id: str | None,
    ack_id: str,
    now: datetime,
    application: str = "VIGIL",
    text: str = "",
) -> bytes:
    """The ACK of one message, encoded as UTF-8 (without MLLP framing).

    Args:
        message: The parsed message, None when it did not parse.
        code: ``AA``, ``AE`` or ``AR``.
        control_id: MSH-10 of the acknowledged message, when known.
        ack_id: MSH-10 of the ACK itself.
        now: Wall-clock time of the ACK (MSH-7), timezone-aware.
        application: MSH-3 of the ACK (the gateway).
        text: Reason of an AE or AR (no patient identifiers).
    """
    source = message if message is not None else hl7.parse(_DEFAULT_HEADER)
    msh = source.segment("MSH")
    trigger = field_text(source, msh, 9, 1, 2)
    version = field_text(source, msh, 12) or "2.5"
    processing = field_text(source, msh, 11) or "P"
    escape = _escape
    fields = [
        "MSH",
        "^~\\&",
        escape(application),
        escape(field_text(source, msh, 6)),
        escape(field_text(source, msh, 3)),
        escape(field_text(source, msh, 4)),
        now.strftime("%Y%m%d%H%M%S%z"),
        "",
        f"ACK^{escape(trigger)}^ACK" if trigger else "ACK",
        escape(ack_id),
        escape(processing),
        escape(version),
    ]
    segments = ["|".join(fields)]
    reason = escape(" ".join(text.split())[:_MAX_TEXT])
    segments.append("|".join(["MSA", code, escape(control_id or ""), reason]))
    if code != "AA":
        segments.append("|".join(["ERR", "", "", _ERROR_CODES[code], "E", "", "", "", reason]))
    return ("\r".join(segments) + "\r").encode("utf-8")
