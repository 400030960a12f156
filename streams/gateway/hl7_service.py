"""One HL7 v2 message in, its ACK out: map, deliver to Kafka, then acknowledge.

- **AA** once Kafka acknowledged every event of the message;
- **AE** with the reason for a message the gateway cannot use: the message (raw bytes,
  reason, origin) is on the dead-letter topic before the AE goes out;
- **AR** when Kafka does not acknowledge (down, or slower than the delivery timeout):
  nothing was accepted and the sender should resend.

Log lines carry the reason and the peer address, never message content.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from hl7.containers import Message

from streams.core.events import TopicKind
from streams.core.validation import dead_letter
from streams.gateway.hl7_ack import AckCode, build_ack
from streams.gateway.hl7_map import MappingOptions, map_parsed
from streams.gateway.hl7_parse import field_text, parse_hl7, peek_control_id
from streams.gateway.metrics import GatewayMetrics
from streams.gateway.sink import KafkaSink, Record
from vigil.errors import MessageError, TopicError

__all__ = ["Hl7Service"]

_PROTOCOL = "mllp"
_log = logging.getLogger(__name__)


class Hl7Service:
    """Answers HL7 v2 messages (see the module docstring)."""

    def __init__(
        self,
        options: MappingOptions,
        sink: KafkaSink,
        metrics: GatewayMetrics,
        *,
        application: str,
        deadletter_max_payload_bytes: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._options = options
        self._sink = sink
        self._metrics = metrics
        self._application = application
        self._max_payload = deadletter_max_payload_bytes
        self._clock = clock
        self._ack_seconds = metrics.ack_seconds.labels(_PROTOCOL)

    async def handle(self, raw: bytes, origin: str) -> bytes:
        """The ACK of one message (unframed)."""
        started = time.perf_counter()
        message: Message | None = None
        message_type = "other"
        code: AckCode
        try:
            message = parse_hl7(raw, max_bytes=self._options.max_message_bytes)
            msh = message.segment("MSH")
            trigger = field_text(message, msh, 9, 1, 2)
            message_type = f"{field_text(message, msh, 9, 1, 1)}^{trigger}"
            mapped = map_parsed(message, self._options)
        except MessageError as exc:
            code, ack = await self._reject(raw, exc, message, origin)
        else:
            self._metrics.skipped.inc(mapped.skipped)
            records = [Record(e.kind.value, e.key, e.payload) for e in mapped.events]
            code, text = "AA", ""
            try:
                await self._sink.deliver(records)
            except TopicError as error:
                _log.warning("AR to %s: %s", origin, error)
                code, text = "AR", "Kafka unavailable: nothing accepted, resend"
            ack = self._ack(message, code, mapped.control_id, text)
        self._metrics.message(_PROTOCOL, message_type, code)
        self._ack_seconds.observe(time.perf_counter() - started)
        return ack

    async def oversized(self, prefix: bytes, origin: str) -> bytes:
        """The AE of a frame over the size limit (its prefix goes to dead-letter)."""
        started = time.perf_counter()
        exc = MessageError(
            "payload_too_large",
            f"frame exceeds the {self._options.max_message_bytes}-byte limit",
            control_id=peek_control_id(prefix),
        )
        code, ack = await self._reject(prefix, exc, None, origin, truncated=True)
        self._metrics.message(_PROTOCOL, "other", code)
        self._ack_seconds.observe(time.perf_counter() - started)
        return ack

    async def _reject(
        self,
        raw: bytes,
        exc: MessageError,
        message: Message | None,
        origin: str,
        *,
        truncated: bool = False,
    ) -> tuple[AckCode, bytes]:
        """Dead-letter ``raw`` (``truncated``: only a prefix of the message arrived), then
        the AE; AR when the dead-letter topic cannot be written."""
        record = dead_letter(
            exc,
            topic=_PROTOCOL,
            partition=None,
            offset=None,
            key=None,
            raw=raw,
            received_time=self._clock(),
            max_payload_bytes=self._max_payload,
        )
        detail = f"{exc.detail} (MLLP from {origin})"[:2000]
        update: dict[str, object] = {"detail": detail}
        if truncated:
            update["payload_truncated"] = True
        record = record.model_copy(update=update)
        try:
            await self._sink.deliver(
                [Record(TopicKind.DEADLETTER.value, None, record.model_dump_json().encode())]
            )
        except TopicError as error:
            _log.warning("AR to %s (dead-letter not stored): %s", origin, error)
            return "AR", self._ack(message, "AR", exc.control_id, "Kafka unavailable: resend")
        self._metrics.deadletters.labels(_PROTOCOL, exc.reason).inc()
        _log.info("AE to %s: %s", origin, exc.reason)
        return "AE", self._ack(message, "AE", exc.control_id, exc.detail)

    def _ack(
        self, message: Message | None, code: AckCode, control_id: str | None, text: str
    ) -> bytes:
        return build_ack(
            message,
            code,
            control_id=control_id,
            ack_id=uuid.uuid4().hex[:20],
            now=self._clock(),
            application=self._application,
            text=text,
        )
