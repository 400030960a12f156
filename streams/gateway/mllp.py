"""MLLP (HL7 v2 minimal lower layer protocol) over asyncio: frames in, answers out.

A frame is ``0x0B``, the message, ``0x1C 0x0D``. Many connections are served at once, and
on each, messages are **pipelined**: the next frame is read, and handled, while earlier ones
still wait for Kafka (at most ``max_in_flight`` per connection), and the ACKs go out in the
order the messages came, as MLLP senders expect. A sender in original mode (one message,
then wait for its ACK) simply has one in flight; many in flight, on one connection or many,
share the producer's batches, so one Kafka round trip acknowledges them all.
Defences, each counted in ``vigil_gateway_frame_errors_total``:

- at most ``max_connections`` open; a further one is closed at once;
- a frame larger than ``max_message_bytes`` gets the answer of ``on_oversized`` (an AE,
  the prefix dead-lettered) and its connection is closed, since the rest cannot be trusted;
- a frame must arrive whole within ``frame_timeout`` of its start byte (slow-loris), and a
  connection that sends nothing for ``idle_timeout`` is closed;
- bytes other than CR/LF between frames, or a connection closed mid-frame, close the
  connection without an answer to that frame (the messages before it are still answered):
  it was not acknowledged, so the sender resends.

The handler turns a message into its ACK; an exception it raises is logged and closes only
that connection (the answers before it are sent first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

from streams.gateway.metrics import GatewayMetrics

__all__ = ["END", "START", "MllpServer"]

START: Final = b"\x0b"
END: Final = b"\x1c\x0d"
_BETWEEN: Final = frozenset(b"\r\n")
_log = logging.getLogger(__name__)

Handler = Callable[[bytes, str], Awaitable[bytes]]
"""Message bytes and the peer's address in, the ACK bytes (unframed) out."""


class MllpServer:
    """Accept MLLP connections and answer each framed message with its handler's ACK."""

    def __init__(
        self,
        handler: Handler,
        on_oversized: Handler,
        metrics: GatewayMetrics,
        *,
        max_message_bytes: int,
        max_connections: int,
        frame_timeout_seconds: float,
        idle_timeout_seconds: float,
        max_in_flight: int = 1,
    ) -> None:
        self._handler = handler
        self._on_oversized = on_oversized
        self._metrics = metrics
        self._max_bytes = max_message_bytes
        self._max_connections = max_connections
        self._frame_timeout = frame_timeout_seconds
        self._idle_timeout = idle_timeout_seconds
        self._max_in_flight = max_in_flight
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: dict[asyncio.StreamReader, None] = {}  # connections between frames
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen; returns the port bound."""
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=ssl_context, limit=self._max_bytes + len(END)
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, let answers in progress finish (up to 5 s), then close."""
        if self._server is not None:
            self._server.close()
        for reader in list(self._idle):
            reader.feed_eof()  # its read ends; answers in progress there are still sent
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            self._metrics.connections_refused.inc()
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._open += 1
        self._metrics.connections.inc()
        peer = writer.get_extra_info("peername")
        origin = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"
        try:
            await self._serve(reader, writer, origin)
        except asyncio.CancelledError:
            pass  # the server is closing; this connection's answer was not finished
        except (ConnectionError, ssl.SSLError) as exc:
            _log.info("MLLP connection from %s ended: %s", origin, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 (one connection's fault never stops the server)
            # The type only: an exception's text may quote message content.
            _log.error("MLLP connection from %s failed: %s", origin, type(exc).__name__)
        finally:
            self._open -= 1
            self._metrics.connections.dec()
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: str
    ) -> None:
        """Read frames and start each one's handler; a second task writes the answers in
        order. Returns once every answer started was written (or the peer went away)."""
        answers: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self._max_in_flight)
        sender = asyncio.create_task(self._send_answers(writer, answers, slots))
        try:
            await self._read_frames(reader, origin, answers, slots, sender)
            answers.put_nowait(None)  # no more: the sender stops after the last answer
            await sender
        except BaseException:
            sender.cancel()
            while not answers.empty():  # what was not answered is not acknowledged
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()
            raise

    async def _read_frames(
        self,
        reader: asyncio.StreamReader,
        origin: str,
        answers: asyncio.Queue[asyncio.Future[bytes] | None],
        slots: asyncio.Semaphore,
        sender: asyncio.Task[None],
    ) -> None:
        while True:
            await slots.acquire()  # at most max_in_flight answers outstanding
            if sender.done():
                return  # the peer went away, or a handler failed
            self._idle[reader] = None
            try:
                async with asyncio.timeout(self._idle_timeout):
                    first = await reader.read(1)
                    while first and first[0] in _BETWEEN:
                        first = await reader.read(1)
            except TimeoutError:
                self._metrics.frame_errors.labels("idle_timeout").inc()
                return
            finally:
                self._idle.pop(reader, None)
            if not first:
                return  # closed between frames
            if first != START:
                self._metrics.frame_errors.labels("no_start_byte").inc()
                return
            try:
                async with asyncio.timeout(self._frame_timeout):
                    framed = await reader.readuntil(END)
            except TimeoutError:
                self._metrics.frame_errors.labels("frame_timeout").inc()
                return
            except asyncio.IncompleteReadError:
                self._metrics.frame_errors.labels("truncated").inc()
                return
            except asyncio.LimitOverrunError:
                self._metrics.frame_errors.labels("oversized").inc()
                prefix = await reader.read(self._max_bytes + len(END))
                answers.put_nowait(asyncio.ensure_future(self._on_oversized(prefix, origin)))
                return
            answers.put_nowait(asyncio.ensure_future(self._handler(framed[: -len(END)], origin)))

    async def _send_answers(
        self,
        writer: asyncio.StreamWriter,
        answers: asyncio.Queue[asyncio.Future[bytes] | None],
        slots: asyncio.Semaphore,
    ) -> None:
        """Write each answer, in the order the frames came, as soon as it is ready; the
        answers ready together go out in one write."""
        carried: asyncio.Future[bytes] | None = None
        try:
            while True:
                pending = carried if carried is not None else await answers.get()
                carried = None
                if pending is None:
                    return
                frames = [START + await pending + END]
                while not answers.empty():
                    following = answers.get_nowait()
                    if following is None or not following.done():
                        if following is None:
                            answers.put_nowait(None)  # seen again once these are written
                        else:
                            carried = following
                        break
                    frames.append(START + following.result() + END)
                writer.write(b"".join(frames))
                for _ in frames:
                    slots.release()
                await writer.drain()
        except BaseException:
            if carried is not None:
                carried.cancel()
            writer.transport.abort()  # the reader sees the end; unsent answers are dropped
            for _ in range(self._max_in_flight):
                slots.release()  # and is not left waiting for a slot
            raise
