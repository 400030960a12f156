"""``vigil gateway`` on loopback: MLLP messages/s into Kafka, ACK latency at a paced rate,
FHIR Observation POSTs/s, and hostile HL7 inputs over a live connection.

One gateway process (its own topics under a fresh prefix) is fed by an asyncio client in
this process, over ``--connections`` MLLP connections, each one message at a time (the
sender waits for the ACK, as interface engines do in original mode):

- **throughput**: real demo stays as ORU^R01 and ADT^A01/A03 messages, as fast as the ACKs
  come back; messages/s = messages / wall time from the first send to the last ACK; every
  ACK must be AA, in the order the messages were sent (MSA-2 checked), and the input
  topics must then hold one record per message. ``--window 1`` (the default) is original
  mode; ``--window N`` lets each connection have N messages sent before their ACKs came
  (a pipelining sender);
- **paced**: fresh messages scheduled at ``--rate`` per second for ``--seconds``, spread
  over the connections; ACK latency = ACK received minus scheduled send time (so a client
  falling behind counts against the gateway);
- **fhir**: Observation POSTs (one HR each) from ``--connections`` concurrent HTTP clients
  (aiohttp, keep-alive);
- **hostile**: ``--hostile`` mutated messages (seeded: byte edits, truncation, segment
  shuffles, oversized, bad framing); each must be answered AA/AE or its connection closed,
  and the gateway must still be alive and healthy afterwards.

Usage::

    .venv/bin/python -m bench.gateway [--stays 40] [--connections 8] [--window 1] [--rate 1000]
        [--code OTHER_CHECKOUT]   # the gateway of another checkout (before/after runs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from kafka import KafkaConsumer, TopicPartition

from bench.common import (
    LOGS,
    ROOT,
    fresh_settings,
    load_average,
    load_events,
    machine,
    write_result,
)
from streams.core.events import AdtEvent, ObservationEvent
from streams.gateway.hl7_write import adt_message, oru_message
from streams.gateway.mllp import END, START
from vigil.testing.gateway import health, running_gateway

_PHASES = ("throughput", "paced", "fhir", "hostile")
_HEADER = b"MSH|^~\\&|BENCH|ICU|VIGIL|HOSP|20250101120005+0000||ORU^R01|"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_item_us(pid: int, before: float, items: int) -> float:
    """The gateway's CPU microseconds per message (or request) since ``before``: on a
    machine shared with other work this, not wall time, says what one free core allows."""
    return round((_cpu_seconds(pid) - before) / items * 1e6, 1)


def _messages(stays: int) -> list[bytes]:
    out = []
    for index, event in enumerate(load_events(stays)):
        data = json.loads(event.value)
        control_id = f"b{index}"
        if event.kind == "adt":
            out.append(adt_message(AdtEvent.model_validate(data), control_id))
        else:
            out.append(oru_message(ObservationEvent.model_validate(data), control_id))
    return out


def _paced_message(index: int, tag: str) -> bytes:
    minute = index % 60
    return (
        _HEADER
        + f"p{tag}{index}|P|2.5\r".encode()
        + f"PID|1||pace{index % 500}\r".encode()
        + f"OBR|1|||P|||2025010112{minute:02d}00+0000\r".encode()
        + b"OBX|1|NM|8867-4^HR^LN||80|/min|||||F\r"
        + b"OBX|2|NM|59408-5^SpO2^LN||97|%|||||F\r"
    )


class Connection:
    """One MLLP connection: send a message, await its ACK."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
        return cls(reader, writer)

    async def send(self, message: bytes) -> bytes:
        """The ACK code (``AA``, ``AE``, ``AR``), or b"" when the server closed."""
        try:
            self.writer.write(START + message + END)
            await self.writer.drain()
            frame = await self.reader.readuntil(END)
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""
        return frame.split(b"MSA|", 1)[1][:2]

    async def pipeline(self, messages: list[bytes], window: int) -> tuple[list[bytes], int]:
        """Send ``messages`` with up to ``window`` awaiting their ACK; the ACK codes, and
        how many ACKs named another message than the next one sent (MSA-2)."""
        slots = asyncio.Semaphore(window)
        codes: list[bytes] = []
        out_of_order = 0

        async def write() -> None:
            for message in messages:
                await slots.acquire()
                self.writer.write(START + message + END)
                await self.writer.drain()

        async def read() -> None:
            nonlocal out_of_order
            for message in messages:
                frame = await self.reader.readuntil(END)
                msa = frame.split(b"MSA|", 1)[1].split(b"\r", 1)[0].split(b"|")
                codes.append(msa[0])
                out_of_order += msa[1] != message.split(b"|", 10)[9]
                slots.release()

        await asyncio.gather(write(), read())
        return codes, out_of_order

    def close(self) -> None:
        self.writer.close()


async def _throughput(
    port: int, messages: list[bytes], connections: int, window: int
) -> dict[str, Any]:
    conns = [await Connection.open(port) for _ in range(connections)]
    codes: dict[str, int] = {}
    out_of_order = 0

    async def run(conn: Connection, share: list[bytes]) -> None:
        nonlocal out_of_order
        answered, wrong = await conn.pipeline(share, window)
        out_of_order += wrong
        for code in answered:
            codes[code.decode()] = codes.get(code.decode(), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(run(c, messages[i::connections]) for i, c in enumerate(conns)))
    seconds = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return {
        "messages": len(messages),
        "window": window,
        "seconds": round(seconds, 2),
        "messages_per_second": round(len(messages) / seconds),
        "acks": codes,
        "acks_out_of_order": out_of_order,
    }


async def _paced(port: int, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    conns = [await Connection.open(port) for _ in range(connections)]
    total = int(rate * seconds)
    tag = os.urandom(3).hex()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    start = time.perf_counter() + 0.2

    async def run(offset: int, conn: Connection) -> None:
        for index in range(offset, total, connections):
            due = start + index / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            code = (await conn.send(_paced_message(index, tag))).decode()
            latencies.append(time.perf_counter() - due)
            codes[code] = codes.get(code, 0) + 1

    await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "rate_per_second": rate,
        "messages": total,
        "achieved_per_second": round(total / elapsed),
        "ack_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "acks": codes,
    }


async def _fhir(http_port: int, posts: int, connections: int) -> dict[str, Any]:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/fhirbench"},
        "effectiveDateTime": "2025-01-01T12:00:00Z",
        "valueQuantity": {"value": 80, "code": "/min"},
    }
    statuses: dict[int, int] = {}
    url = f"http://127.0.0.1:{http_port}/fhir/Observation"
    headers = {"Content-Type": "application/fhir+json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def run(offset: int) -> None:
            for index in range(offset, posts, connections):
                payload = json.dumps(body | {"id": f"o{index}"})
                async with client.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(run(i) for i in range(connections)))
        seconds = time.perf_counter() - started
    return {
        "posts": posts,
        "seconds": round(seconds, 2),
        "posts_per_second": round(posts / seconds),
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def _mutate(rng: random.Random, base: bytes) -> tuple[bytes, bool]:
    """A hostile message and whether it is sent without framing."""
    choice = rng.randrange(40)
    data = bytearray(base)
    if choice < 5:
        return bytes(rng.randbytes(rng.randrange(1, 400))).replace(END, b""), False
    if choice < 10:
        return bytes(data[: rng.randrange(len(data))]), False
    if choice < 15:
        segments = bytes(data).split(b"\r")
        rng.shuffle(segments)
        return b"\r".join(segments), False
    if choice == 15:
        return bytes(data) + b"OBX|9|NM|8867-4^HR^LN||1|/min\r" * 40_000, False  # oversized
    if choice < 18:
        return bytes(data), True  # no start byte
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(len(data))
        data[at : at + rng.randrange(0, 4)] = rng.choice(
            [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\xff", b"\x00", b"9" * 70, b"", b"NaN"]
        )
    return bytes(data).replace(END, b""), False


async def _hostile(port: int, messages: list[bytes], count: int) -> dict[str, Any]:
    rng = random.Random(20)  # noqa: S311 (fuzzing, not cryptography)
    outcomes: dict[str, int] = {}
    conn = await Connection.open(port)
    for _ in range(count):
        message, unframed = _mutate(rng, rng.choice(messages))
        if unframed:
            try:
                conn.writer.write(message + END)
                await conn.writer.drain()
                code = b"" if not await conn.reader.read(1) else b"?"
            except ConnectionError:
                code = b""
        else:
            code = await conn.send(message)
        outcome = code.decode() or "closed"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if not code:
            conn.close()
            conn = await Connection.open(port)
    conn.close()
    return {"tried": count, "outcomes": outcomes}


def _records(bootstrap: str, prefix: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [
            TopicPartition(f"{prefix}.{kind}", p)
            for kind in ("vitals", "labs", "adt")
            for p in consumer.partitions_for_topic(f"{prefix}.{kind}") or ()
        ]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=40)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--window", type=int, default=1, help="messages in flight per connection (throughput)"
    )
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--fhir-posts", type=int, default=5000)
    parser.add_argument("--hostile", type=int, default=10_000)
    parser.add_argument("--name", default="gateway")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=_PHASES,
        default=list(_PHASES),
        help="which figures to measure (all by default)",
    )
    parser.add_argument(
        "--linger-ms", type=int, default=None, help="VIGIL_GATEWAY_KAFKA_LINGER_MS to run with"
    )
    parser.add_argument(
        "--code", type=Path, default=None, help="run the gateway of this checkout (A/B runs)"
    )
    args = parser.parse_args()

    extra: dict[str, Any] = {}
    if args.linger_ms is not None:
        extra["kafka_linger_ms"] = str(args.linger_ms)
    settings = fresh_settings("gw")
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{args.name}.log"
    log.unlink(missing_ok=True)
    messages = _messages(args.stays)
    before = load_average()
    with running_gateway(
        log,
        bootstrap=settings.kafka_bootstrap,
        prefix=settings.topic_prefix,
        log_level="WARNING",
        max_connections="256",
        code=args.code,
        **extra,
    ) as gateway:
        mllp_port, http_port, pid = gateway.mllp_port, gateway.http_port, gateway.proc.pid
        figures: dict[str, Any] = {}
        if "throughput" in args.phases:
            cpu = _cpu_seconds(pid)
            throughput = asyncio.run(
                _throughput(mllp_port, messages, args.connections, args.window)
            )
            throughput["gateway_cpu_us_per_message"] = _per_item_us(pid, cpu, len(messages))
            throughput["records_on_input_topics"] = _records(
                settings.kafka_bootstrap, settings.topic_prefix
            )
            figures["throughput"] = throughput
        if "paced" in args.phases:
            cpu = _cpu_seconds(pid)
            paced = asyncio.run(_paced(mllp_port, args.rate, args.seconds, args.connections))
            paced["gateway_cpu_us_per_message"] = _per_item_us(pid, cpu, paced["messages"])
            figures["paced"] = paced
        if "fhir" in args.phases:
            cpu = _cpu_seconds(pid)
            fhir = asyncio.run(_fhir(http_port, args.fhir_posts, args.connections))
            fhir["gateway_cpu_us_per_post"] = _per_item_us(pid, cpu, args.fhir_posts)
            figures["fhir"] = fhir
        if "hostile" in args.phases:
            hostile = asyncio.run(_hostile(mllp_port, messages, args.hostile))
            hostile["alive_after"] = gateway.alive()
            hostile["health_after"] = health(gateway)[0]
            figures["hostile"] = hostile
    write_result(
        args.name,
        {
            "machine": machine(),
            "load_before": before,
            "load_after": load_average(),
            "code": str(args.code) if args.code else "this checkout",
            "connections": args.connections,
            "stays": args.stays,
            "gateway_settings": extra,
            **figures,
            "log": str(Path(log).relative_to(ROOT)),
        },
    )


if __name__ == "__main__":
    main()
