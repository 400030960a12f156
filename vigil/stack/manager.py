"""Bring the local stack up and down, and report its status."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from vigil.errors import ConfigError, StackError
from vigil.stack.process import ManagedProcess, tail
from vigil.stack.services import SERVICE_NAMES, Service, make_services
from vigil.stack.settings import StackSettings

__all__ = ["ServiceStatus", "Stack", "parse_only"]


@dataclass(frozen=True)
class ServiceStatus:
    """What ``vigil stack status`` reports for one service."""

    name: str
    address: str
    running: bool
    healthy: bool
    pid: int | None
    log_file: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)


def parse_only(only: str | None) -> tuple[str, ...]:
    """Parse ``--only kafka,redis`` into service names, in start order.

    Raises:
        ConfigError: A name is not a known service.
    """
    if only is None or not only.strip():
        return SERVICE_NAMES
    wanted = {part.strip() for part in only.split(",") if part.strip()}
    unknown = sorted(wanted - set(SERVICE_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}"
        )
    return tuple(name for name in SERVICE_NAMES if name in wanted)


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class Stack:
    """The local Kafka, Redis, Triton and Prometheus processes."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings.resolved()
        self.services = make_services(self.settings)

    def _process(self, service: Service) -> ManagedProcess:
        run = self.settings.state_dir / "run"
        logs = self.settings.state_dir / "logs"
        return ManagedProcess(
            service.name, run / f"{service.name}.pid", logs / f"{service.name}.log"
        )

    def status(self, names: Iterable[str] = SERVICE_NAMES) -> list[ServiceStatus]:
        """Return the status of the named services."""
        result = []
        for name in names:
            service = self.services[name]
            proc = self._process(service)
            pid = proc.pid()
            result.append(
                ServiceStatus(
                    name=name,
                    address=service.address,
                    running=pid is not None,
                    healthy=pid is not None and service.healthy(),
                    pid=pid,
                    log_file=str(proc.log_file),
                )
            )
        return result

    def up(self, names: Sequence[str] = SERVICE_NAMES) -> list[ServiceStatus]:
        """Start the named services (those not already running) and wait until healthy.

        Raises:
            StackError: A service could not start or did not become healthy in time; the
                message carries the tail of its log.
        """
        started: list[Service] = []
        for name in names:
            service = self.services[name]
            proc = self._process(service)
            if proc.pid() is not None:
                continue
            busy = [p for p in service.ports if _port_in_use(self.settings.host, p)]
            if busy:
                raise StackError(
                    f"{name}: port {busy[0]} on {self.settings.host} is used by another program; "
                    f"stop it or choose another port (see `vigil stack --help`)"
                )
            service.home.mkdir(parents=True, exist_ok=True)
            argv = service.argv()
            proc.start(argv, env=service.env(), cwd=service.home)
            started.append(service)
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        pending = [self.services[name] for name in names]
        while pending:
            for service in list(pending):
                proc = self._process(service)
                if proc.pid() is None:
                    raise StackError(
                        f"{service.name} exited during start-up; last log lines:\n"
                        f"{tail(proc.log_file)}"
                    )
                if service.healthy():
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                service = pending[0]
                raise StackError(
                    f"{service.name} not healthy after {self.settings.start_timeout_seconds:.0f}s;"
                    f" last log lines:\n{tail(self._process(service).log_file)}"
                )
            if pending:
                time.sleep(0.5)
        return self.status(names)

    def down(self, names: Sequence[str] = SERVICE_NAMES) -> list[str]:
        """Stop the named services that Vigil started, in reverse start order.

        Returns:
            Names of the services that were running and have been stopped.
        """
        stopped = []
        for name in reversed(names):
            proc = self._process(self.services[name])
            if proc.stop(self.settings.stop_timeout_seconds):
                stopped.append(name)
        return stopped
