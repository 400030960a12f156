"""Flower messages over one TLS gRPC channel on loopback: the server's :class:`RelayGrid`
and the site side's :func:`serve_site`.

Flower's own SuperLink/SuperNode deployment runs apps packaged as FABs through its
``flwr`` command line, whose dependencies (typer < 0.21, cryptography < 51) would
downgrade packages Vigil uses. The protocol, the messages and their serialisation here
are Flower's (``flwr.serverapp.Grid``, ``flwr.clientapp.ClientApp`` with its mods,
``flwr.common.serde``); only the carrier is this module: sites **pull** their
instructions from the server and **push** their replies (a hospital opens no inbound
port), one unary gRPC call each, bytes in and out.

Every message the server receives passes :meth:`RelayServer.received` (the tests read it
to show that no single site's update reaches the server).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from uuid import uuid4

import grpc
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from vigil.errors import FederationError

__all__ = ["RelayGrid", "RelayServer", "SiteLink", "serve_site"]

_SERVICE = "vigil.federated.Relay"
SERVER_NODE_ID = SUPERLINK_NODE_ID
_PULL_WAIT_SECONDS = 1.0


def _encode(message: Message) -> bytes:
    return bytes(message_to_proto(message).SerializeToString())


def _decode(data: bytes) -> Message:
    proto = ProtoMessage()
    proto.ParseFromString(data)
    return message_from_proto(proto)


@dataclass
class _State:
    """What the server holds: registered sites, their inboxes and the replies."""

    nodes: dict[int, str] = field(default_factory=dict)
    inbox: dict[int, queue.Queue[bytes]] = field(default_factory=dict)
    replies: dict[str, Message] = field(default_factory=dict)
    received: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RelayServer:
    """The server end: a gRPC server (TLS with ``certificates``) and its :class:`RelayGrid`.

    Args:
        address: ``host:port`` to bind (port 0: any free port; see :attr:`port`).
        certificates: ``(server certificate PEM, server key PEM)``; None only in tests
            that exercise the protocol, never from the command line.
        expected_sites: Site names allowed to register (others are refused).
    """

    def __init__(
        self,
        address: str,
        certificates: tuple[bytes, bytes] | None,
        expected_sites: Iterable[str],
    ) -> None:
        self._state = _State()
        self._expected = frozenset(expected_sites)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {
            "Register": grpc.unary_unary_rpc_method_handler(self._register),
            "Pull": grpc.unary_unary_rpc_method_handler(self._pull),
            "Push": grpc.unary_unary_rpc_method_handler(self._push),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, handlers),)
        )
        if certificates is None:
            self.port = self._server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials([(certificates[1], certificates[0])])
            self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise FederationError(f"cannot bind the federation server to {address}")
        self.grid = RelayGrid(self._state)

    def start(self) -> None:
        """Starts serving."""
        self._server.start()

    def stop(self) -> None:
        """Stops at once (sites still polling get UNAVAILABLE and stop)."""
        self._server.stop(grace=None)

    @property
    def received(self) -> list[bytes]:
        """Every pushed message as it arrived (serialised), oldest first."""
        with self._state.lock:
            return list(self._state.received)

    @property
    def sites(self) -> dict[int, str]:
        """Registered node id → site name."""
        with self._state.lock:
            return dict(self._state.nodes)

    def _register(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        name = request.decode()
        with self._state.lock:
            if name not in self._expected or name in self._state.nodes.values():
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unexpected site {name!r}")
            node_id = SERVER_NODE_ID + 1 + len(self._state.nodes)
            self._state.nodes[node_id] = name
            self._state.inbox[node_id] = queue.Queue()
        return json.dumps({"node_id": node_id}).encode()

    def _pull(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        node_id = int(json.loads(request)["node_id"])
        inbox = self._state.inbox.get(node_id)
        if inbox is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown node")
            return b""  # abort raises; this line is never reached
        try:
            return inbox.get(timeout=_PULL_WAIT_SECONDS)
        except queue.Empty:
            return b""

    def _push(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        message = _decode(request)
        with self._state.lock:
            if message.metadata.src_node_id not in self._state.nodes:
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown node")
            self._state.received.append(request)
            self._state.replies[message.metadata.reply_to_message_id] = message
        return b""


class RelayGrid(Grid):
    """Flower's ``Grid`` over :class:`RelayServer`: the ServerApp side of the relay."""

    def __init__(self, state: _State, poll_seconds: float = 0.02) -> None:
        self._state = state
        self._run = Run.create_empty(run_id=1)
        self._poll_seconds = poll_seconds

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        with self._state.lock:
            return list(self._state.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            meta = message.metadata
            meta.__dict__["_message_id"] = str(uuid4())
            meta.__dict__["_run_id"] = self._run.run_id
            meta.__dict__["_src_node_id"] = SERVER_NODE_ID
            inbox = self._state.inbox.get(meta.dst_node_id)
            if inbox is None:
                raise FederationError(f"no site with node id {meta.dst_node_id}")
            inbox.put(_encode(message))
            ids.append(meta.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._state.lock:
            return [self._state.replies.pop(i) for i in message_ids if i in self._state.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Message] = []
        while waiting and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(waiting))
            out += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(self._poll_seconds)
        return out


@dataclass(frozen=True)
class SiteLink:
    """How a site reaches the server.

    Attributes:
        address: ``host:port`` of the server.
        root_certificate: PEM of the run's CA; None only in protocol tests.
        site: This site's name (registered once).
    """

    address: str
    root_certificate: bytes | None
    site: str


def serve_site(
    link: SiteLink,
    app: ClientApp,
    *,
    stop: threading.Event | None = None,
    drop_after: Callable[[Message], bool] | None = None,
    connect_timeout_seconds: float = 30.0,
) -> int:
    """Registers, then answers the server's messages with ``app`` until the server goes.

    Args:
        link: Server address, CA and site name.
        app: The site's ClientApp (mods included); its context persists across messages.
        stop: Set to stop polling (tests).
        drop_after: Tests only: when it returns True for a received message, the site
            vanishes without answering (a dropout mid-round).
        connect_timeout_seconds: How long to wait for the server to come up.

    Returns:
        The number of messages answered.
    """
    if link.root_certificate is None:
        channel = grpc.insecure_channel(link.address)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=link.root_certificate)
        channel = grpc.secure_channel(link.address, creds)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout_seconds)
        except grpc.FutureTimeoutError as exc:
            raise FederationError(f"federation server {link.address} did not answer") from exc
        register = channel.unary_unary(f"/{_SERVICE}/Register")
        pull = channel.unary_unary(f"/{_SERVICE}/Pull")
        push = channel.unary_unary(f"/{_SERVICE}/Push")
        node_id = int(json.loads(register(link.site.encode()))["node_id"])
        context = Context(
            run_id=1,
            node_id=node_id,
            node_config={"site": link.site},
            state=RecordDict(),
            run_config={},
        )
        answered = 0
        while stop is None or not stop.is_set():
            try:
                data = pull(json.dumps({"node_id": node_id}).encode())
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    return answered  # the server is gone: the federation is over
                raise FederationError(f"site {link.site}: {exc.code().name}") from exc
            if not data:
                continue
            message = _decode(data)
            if drop_after is not None and drop_after(message):
                return answered
            reply = app(message, context)
            push(_encode(reply))
            answered += 1
    return answered
