"""Start, find and stop one background service process, tracked by a pid file.

The pid file records the pid *and* the process start time read from ``/proc``, so a
recycled pid is never mistaken for our service and ``down`` never signals a stranger.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import StackError

__all__ = ["ManagedProcess", "tail"]

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Services this process started, kept referenced until stopped: a ``Popen`` collected
while its process still runs warns (ResourceWarning), and a service is meant to outlive
the call that started it (a test that restarts Kafka, say)."""


def _start_ticks(pid: int) -> int | None:
    """Return the kernel start time of ``pid`` in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after the closing paren are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    state = fields[0]
    if state == "Z":  # a zombie is as good as dead
        return None
    return int(fields[19])


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


@dataclass(frozen=True)
class ManagedProcess:
    """A service process started by Vigil, identified by its pid file.

    Attributes:
        name: Service name, used for file names.
        pid_file: Where the pid and start time are recorded.
        log_file: Where stdout and stderr go.
    """

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """Return the pid if the process this pid file recorded is still alive."""
        try:
            record = json.loads(self.pid_file.read_text())
            pid = int(record["pid"])
            ticks = int(record["start_ticks"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            return None  # ours, exited (poll reaped it: no zombie left)
        return pid if _start_ticks(pid) == ticks else None

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start ``argv`` in its own session with output appended to the log file.

        Returns:
            The new process id.

        Raises:
            StackError: The executable could not be started.
        """
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n--- vigil stack: starting {self.name}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(  # noqa: S603 - argv is built by Vigil, not a shell
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StackError(f"{self.name}: cannot start {argv[0]}: {exc}") from exc
        ticks = None
        for _ in range(50):
            ticks = _start_ticks(proc.pid)
            if ticks is not None:
                break
            time.sleep(0.01)
        if ticks is None:
            raise StackError(f"{self.name}: exited at once; log {self.log_file}")
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "start_ticks": ticks}))
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def stop(self, timeout_seconds: float) -> bool:
        """Stop the process group politely (SIGTERM), then forcefully (SIGKILL).

        Returns:
            True if a running process was stopped, False if none was running.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            self._signal_group(pid, signal.SIGKILL)
            for _ in range(50):
                if self.pid() is None:
                    break
                time.sleep(0.1)
        self._reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        # The service leads its own session, so its group id is its pid; children
        # (Triton's Python-backend stubs) go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    @staticmethod
    def _reap(pid: int) -> None:
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            proc.poll()  # reaps it if it is ours and has exited
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
