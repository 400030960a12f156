"""Local console users: a JSON file of names, roles and argon2id password hashes.

File layout (``VIGIL_CONSOLE_USERS_FILE``, written atomically with mode 0600)::

    {"version": 1, "users": {"alice": {"role": "clinician", "hash": "$argon2id$..."}}}

Roles, each including the one before: ``viewer`` (board and patient pages), ``clinician``
(acknowledge, snooze, escalate), ``admin`` (the same today; reserved for user management).
Passwords are never stored or logged; verification takes the same time whether or not the
user exists (a dummy hash is checked for unknown names).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from vigil.errors import ConfigError

__all__ = [
    "MIN_PASSWORD_CHARS",
    "ROLES",
    "Role",
    "User",
    "UserStore",
    "can_act",
    "valid_username",
]

Role = Literal["viewer", "clinician", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
MIN_PASSWORD_CHARS: Final = 10
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def valid_username(name: str) -> bool:
    """True for 1-64 of ``[A-Za-z0-9._@-]``, starting with a letter or digit."""
    return _NAME.fullmatch(name) is not None


def can_act(role: str) -> bool:
    """True when ``role`` may acknowledge, snooze and escalate alerts."""
    return role in ("clinician", "admin")


@dataclass(frozen=True)
class User:
    """A signed-in identity: the name recorded on actions, and its role."""

    name: str
    role: Role


class UserStore:
    """The users file; re-read when it changes on disk.

    Args:
        path: The JSON file (missing: no users yet).
        hasher: argon2 parameters (tests may use cheaper ones).
    """

    def __init__(self, path: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = path
        self.hasher = hasher or PasswordHasher()
        self._dummy = self.hasher.hash("not a password of anyone")
        self._users: dict[str, dict[str, str]] = {}
        self._stamp: tuple[int, int] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return self._users
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                users = data["users"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"unreadable users file {self.path}: {exc}") from None
            if not isinstance(users, dict):
                raise ConfigError(f"unreadable users file {self.path}: users is not an object")
            self._users, self._stamp = users, stamp
        return self._users

    def get(self, name: str) -> User | None:
        """The user called ``name``, if any."""
        entry = self._load().get(name)
        if entry is None or entry.get("role") not in ROLES:
            return None
        return User(name, entry["role"])  # type: ignore[arg-type]

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (same work either way)."""
        entry = self._load().get(name) if valid_username(name) else None
        hashed = entry.get("hash", self._dummy) if entry else self._dummy
        try:
            self.hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        return self.get(name)

    def add(self, name: str, role: str, password: str) -> bool:
        """Add or replace a user; returns True when the user already existed.

        Raises:
            ConfigError: Bad name, role or a password shorter than ``MIN_PASSWORD_CHARS``.
        """
        if not valid_username(name):
            raise ConfigError(
                f"invalid user name {name!r}: use 1-64 of [A-Za-z0-9._@-], starting with a "
                "letter or digit"
            )
        if role not in ROLES:
            raise ConfigError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ConfigError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
        users = dict(self._load())
        existed = name in users
        users[name] = {"role": role, "hash": self.hasher.hash(password)}
        self._write(users)
        return existed

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "users": users}, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".users-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None
