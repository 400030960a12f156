"""Fetch an imaging study's bytes, and store its heatmap artifact.

A ``vigil.imaging`` event carries its pixels inline (small images) or names them by URI:

* ``file:///abs/path`` — a file under ``VIGIL_IMAGING_FILE_ROOT`` (a path that resolves
  outside it, through ``..`` or a symbolic link, is refused: a Kafka record must not be
  able to make the worker read arbitrary files);
* ``redis:///key`` (or ``redis://<the worker's Redis host:port>/key``) — a blob in the
  worker's own Redis; other hosts are refused;
* ``https://host/...`` (``http`` too) — an object store or PACS gateway whose host is in
  ``VIGIL_IMAGING_HTTP_HOSTS`` (empty by default: no host is trusted); a presigned S3 URL
  is the way to read from S3;
* ``s3://`` is refused with that advice.

Every refusal is an :class:`~vigil.errors.ImageError` with reason ``image_unavailable``,
which sends the event to dead-letter with the reason; nothing is retried here (the study
can be re-driven from dead-letter). Studies larger than ``VIGIL_IMAGING_MAX_BYTES`` are
refused before they are read whole.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.core.events import DeadLetterReason, ImagingEvent
from vigil.errors import ImageError

__all__ = ["HeatmapStore", "ImageSource"]


def _unavailable(detail: str) -> ImageError:
    return ImageError(DeadLetterReason.IMAGE_UNAVAILABLE, detail)


class ImageSource:
    """Reads a study's bytes from where its event says they are.

    Args:
        file_root: Directory that ``file:`` URIs must resolve inside.
        max_bytes: Largest study read.
        redis: The worker's Redis client (``redis:`` URIs), or None to refuse them.
        redis_address: ``host:port`` of that Redis, accepted as a ``redis:`` URI's host.
        http_hosts: Hosts trusted for ``http(s):`` URIs.
        timeout_seconds: Deadline of one fetch.
    """

    def __init__(
        self,
        *,
        file_root: str | Path,
        max_bytes: int,
        redis: aioredis.Redis | None = None,
        redis_address: str = "",
        http_hosts: tuple[str, ...] = (),
        timeout_seconds: float = 5.0,
    ) -> None:
        self.file_root = Path(file_root).resolve()
        self.max_bytes = max_bytes
        self.redis = redis
        self.redis_address = redis_address
        self.http_hosts = frozenset(host.lower() for host in http_hosts)
        self.timeout_seconds = timeout_seconds
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        """Close the HTTP client, if one was opened."""
        if self._http is not None:
            await self._http.aclose()

    async def fetch(self, event: ImagingEvent) -> bytes:
        """The study's encoded bytes.

        Raises:
            ImageError: Missing, refused, too large or unreachable (``image_unavailable``).
        """
        if event.inline_data is not None:
            return event.inline_data
        uri = event.image_uri or ""
        parts = urlsplit(uri)
        try:
            if parts.scheme == "file":
                return await asyncio.to_thread(self._read_file, parts.netloc, parts.path)
            if parts.scheme in ("redis", "rediss"):
                return await self._read_redis(parts.netloc, parts.path)
            if parts.scheme in ("http", "https"):
                return await self._read_http(uri, parts.hostname or "")
        except TimeoutError as exc:
            raise _unavailable(f"{parts.scheme} read timed out") from exc
        if parts.scheme == "s3":
            raise _unavailable("s3: URIs are not read directly; publish a presigned https URL")
        raise _unavailable(f"unsupported image URI scheme {parts.scheme!r}")

    def _read_file(self, host: str, raw_path: str) -> bytes:
        if host not in ("", "localhost"):
            raise _unavailable("file: URIs must name a local path (file:///...)")
        path = Path(unquote(raw_path)).resolve()
        if not path.is_relative_to(self.file_root):
            raise _unavailable("the file is outside VIGIL_IMAGING_FILE_ROOT")
        if path.is_dir():
            raise _unavailable("the path is a directory")
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise _unavailable(f"the file holds {size} bytes, more than {self.max_bytes}")
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise _unavailable("no such file") from exc
        except IsADirectoryError as exc:
            raise _unavailable("the path is a directory") from exc
        except PermissionError as exc:
            raise _unavailable("the file is not readable by the worker") from exc

    async def _read_redis(self, host: str, raw_path: str) -> bytes:
        if self.redis is None:
            raise _unavailable("redis: URIs are not enabled")
        if host not in ("", self.redis_address):
            raise _unavailable("redis: URIs must name the worker's own Redis (redis:///key)")
        key = unquote(raw_path.lstrip("/"))
        if not key:
            raise _unavailable("the redis: URI names no key")
        try:
            size = await asyncio.wait_for(self.redis.strlen(key), self.timeout_seconds)
            if int(size) > self.max_bytes:
                raise _unavailable(f"the blob holds {size} bytes, more than {self.max_bytes}")
            data = await asyncio.wait_for(self.redis.get(key), self.timeout_seconds)
        except RedisError as exc:
            raise _unavailable(f"Redis read failed: {type(exc).__name__}") from exc
        if data is None:
            raise _unavailable("no such Redis key")
        return data.encode() if isinstance(data, str) else bytes(data)

    async def _read_http(self, uri: str, host: str) -> bytes:
        if host.lower() not in self.http_hosts:
            raise _unavailable("the host is not in VIGIL_IMAGING_HTTP_HOSTS")
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False)
        try:
            async with self._http.stream("GET", uri) as response:
                if response.status_code != 200:
                    raise _unavailable(f"HTTP status {response.status_code}")
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise _unavailable(f"the study is larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise _unavailable(f"HTTP read failed: {type(exc).__name__}") from exc
        return b"".join(chunks)


class HeatmapStore:
    """Stores CAM heatmaps as PNG files named by finding id (no patient identifier).

    Args:
        directory: Where the files go (created if missing). Several workers may share it:
            each write is atomic (a temporary file renamed into place), and a finding's
            name is deterministic, so reprocessing rewrites the same file.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()

    async def put(self, finding_id: str, png: bytes) -> str:
        """Store one heatmap; returns its ``file:`` URI."""
        return await asyncio.to_thread(self._write, finding_id, png)

    def _write(self, finding_id: str, png: bytes) -> str:
        if not finding_id.isalnum():
            raise ValueError("a finding id is hexadecimal")
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{finding_id}.png"
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(png)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target.as_uri()
