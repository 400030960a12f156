"""Triton adapter: micro-batched, asynchronous gRPC scoring with retries and a breaker.

Callers ``await scorer.score(window, images)`` one patient at a time; a background task
gathers concurrent requests (up to ``batch_max_size`` patients, waiting at most
``batch_max_wait_ms``) into one gRPC ``infer`` call. Transient failures (unavailable,
deadline exceeded) are retried with a short back-off; repeated failures open the circuit
breaker and calls fail fast with :class:`~vigil.errors.CircuitOpenError` until Triton
recovers. A request Triton rejects as invalid is split so that only the bad patient fails.

The gRPC channel reconnects with a back-off capped at ``_MAX_RECONNECT_BACKOFF_MS``:
gRPC's own default grows to 120 s while the server is away, and calls made during a
back-off fail at once without trying to connect, so after a long outage the worker stayed
degraded for up to two minutes after Triton was back (docs/worker.md, "Restarts").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from streams.core.breaker import CircuitBreaker
from streams.core.features import FeatureWindow
from streams.metrics import WorkerMetrics
from vigil.errors import CircuitOpenError, InferenceError

__all__ = ["ImageInput", "ModelOutput", "TritonScorer"]

log = logging.getLogger(__name__)

_MAX_RECONNECT_BACKOFF_MS = 2000
_MAX_IN_FLIGHT = 2
"""gRPC calls per model at once: the next batch is serialised and sent while Triton
computes the current one."""


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options plus a bounded reconnect back-off."""
    keepalive = KeepAliveOptions()
    unlimited = 2**31 - 1  # tritonclient's message size limit (INT32_MAX)
    return [
        ("grpc.max_send_message_length", unlimited),
        ("grpc.max_receive_message_length", unlimited),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
    ]


_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL")


@dataclass(frozen=True)
class ImageInput:
    """One imaging embedding for the fusion head."""

    age_hours: float
    embedding: Sequence[float]


@dataclass(frozen=True)
class ModelOutput:
    """One patient's model answer.

    Attributes:
        risk: Calibrated probability, 0-1 (NaN from a model without a ``risk`` output,
            such as ``ood``).
        fused: ``[F]`` fused representation (empty from a model without one).
        contributions: ``[P]`` per-parameter contributions, model order (only from a
            model that declares them, such as ``deterioration_explain``).
        extra: Any further outputs the model declares, by name.
    """

    risk: float
    fused: npt.NDArray[np.float32]
    contributions: npt.NDArray[np.float32] | None
    extra: dict[str, npt.NDArray[Any]]


@dataclass
class _Pending:
    arrays: dict[str, npt.NDArray[Any]]
    future: asyncio.Future[ModelOutput]
    sent_at: float | None = None
    """Monotonic time its gRPC call started (None while queued)."""


class TritonScorer:
    """Scores feature windows on Triton's deterioration model.

    Args:
        url: Triton gRPC ``host:port``.
        model: Model name in the repository.
        timeout_seconds: Per-request deadline.
        retries: Extra attempts for a transient failure.
        breaker: Circuit breaker guarding the calls.
        batch_max_size: Most patients per gRPC call.
        batch_max_wait_ms: Longest wait to fill a batch.
        metrics: Where latency, batch size and errors are counted.
        client_options: Channel keyword arguments for tritonclient's gRPC client (TLS:
            ``ssl``, ``root_certificates``, ...; see ``streams.adapters.security``).
        headers: gRPC metadata sent with every request (an authorization header).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout_seconds: float,
        retries: int,
        breaker: CircuitBreaker,
        batch_max_size: int,
        batch_max_wait_ms: int,
        metrics: WorkerMetrics,
        client_options: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self._client_options = dict(client_options or {})
        self._headers = None if headers is None else dict(headers)
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.breaker = breaker
        self.batch_max_size = batch_max_size
        self.batch_max_wait = batch_max_wait_ms / 1000
        self.metrics = metrics
        self.model_version = "unknown"
        self._client: grpcaio.InferenceServerClient | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._inputs: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._outputs: list[str] = []
        self.parameters: dict[str, str] = {}
        """The model configuration's ``parameters`` (known once a request has gone out)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and start the batching task (metadata is read lazily)."""
        self._client = grpcaio.InferenceServerClient(self.url, **self._client_options)
        self._task = asyncio.create_task(self._run(), name="vigil-triton-batcher")

    async def close(self) -> None:
        """Stop the batching task and close the channel; waiting callers get an error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(InferenceError("scorer closed"))
        if self._client is not None:
            await self._client.close()

    async def _ensure_metadata(self) -> None:
        if self._inputs:
            return
        client = self._require_client()
        meta = await client.get_model_metadata(
            self.model, headers=self._headers, as_json=True, client_timeout=self.timeout_seconds
        )
        config = await client.get_model_config(
            self.model, headers=self._headers, as_json=True, client_timeout=self.timeout_seconds
        )
        self.model_version = str(max((int(v) for v in meta.get("versions", ["1"])), default=1))
        for spec in config["config"]["input"]:
            dims = tuple(int(d) for d in spec["dims"])
            self._inputs[spec["name"]] = (str(spec["data_type"]).removeprefix("TYPE_"), dims)
        self._outputs = [spec["name"] for spec in config["config"]["output"]]
        self.parameters = {
            name: str(value.get("string_value", ""))
            for name, value in config["config"].get("parameters", {}).items()
        }

    async def ensure_metadata(self) -> None:
        """Read the model's metadata and configuration (once).

        Raises:
            InferenceError: Triton did not answer or does not serve the model.
        """
        try:
            await self._ensure_metadata()
        except InferenceServerException as exc:
            self.metrics.inference_errors.labels(self.model, "metadata").inc()
            raise InferenceError(f"model metadata unavailable: {exc.status()}") from exc

    def declares(self, output: str) -> bool:
        """Whether the model's configuration declares ``output`` (metadata read first)."""
        return output in self._outputs

    def takes(self, name: str) -> bool:
        """Whether the model declares the input ``name`` (read with its metadata)."""
        return name in self._inputs

    def input_dims(self, name: str) -> tuple[int, ...]:
        """The configured dims (batch excluded) of input ``name`` (metadata read first)."""
        return self._inputs[name][1]

    def image_arrays(self, images: Sequence[ImageInput]) -> dict[str, npt.NDArray[Any]]:
        """The image slots of a request (the ``K`` most recent embeddings, zero-padded),
        as the model's ``image_*`` inputs; empty for a model without them."""
        if "image_embeddings" not in self._inputs:
            return {}
        k, e = self._inputs["image_embeddings"][1]
        emb = np.zeros((k, e), dtype=np.float32)
        age = np.zeros((k,), dtype=np.float32)
        present = np.zeros((k,), dtype=np.float32)
        for i, image in enumerate(list(images)[-k:]):
            vec = np.asarray(image.embedding, dtype=np.float32)[:e]
            emb[i, : vec.shape[0]] = vec
            age[i] = image.age_hours
            present[i] = 1.0
        return {"image_embeddings": emb, "image_age_hours": age, "image_mask": present}

    def _require_client(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            raise InferenceError("scorer not started")
        return self._client

    # -- public API ----------------------------------------------------------------------

    async def score(self, window: FeatureWindow, images: Sequence[ImageInput] = ()) -> ModelOutput:
        """Score one patient's window.

        Raises:
            CircuitOpenError: The breaker is open (Triton is considered down).
            InferenceError: The request failed after retries, or was invalid.
        """
        if not self.breaker.allow():
            raise CircuitOpenError("Triton circuit open")
        try:
            await self._ensure_metadata()
        except InferenceServerException as exc:
            self.breaker.record_failure()
            self.metrics.inference_errors.labels(self.model, "metadata").inc()
            raise InferenceError(f"model metadata unavailable: {exc.status()}") from exc
        return await self._submit(self._arrays(window, images))

    async def infer(self, arrays: dict[str, npt.NDArray[Any]]) -> ModelOutput:
        """Run one request of arbitrary inputs (one row, batch dimension excluded), such as
        the imaging model's ``image``; shares the batching, retries and breaker of
        :meth:`score`. Outputs other than ``risk``/``fused``/``contributions`` are in
        ``extra``.

        Raises:
            CircuitOpenError: The breaker is open.
            InferenceError: The request failed, was invalid, or lacks a declared input.
        """
        if not self.breaker.allow():
            raise CircuitOpenError("Triton circuit open")
        try:
            await self._ensure_metadata()
        except InferenceServerException as exc:
            self.breaker.record_failure()
            self.metrics.inference_errors.labels(self.model, "metadata").inc()
            raise InferenceError(f"model metadata unavailable: {exc.status()}") from exc
        missing = sorted(set(self._inputs) - set(arrays))
        if missing:
            raise InferenceError(f"model {self.model!r} needs inputs {missing}")
        return await self._submit({name: arrays[name] for name in self._inputs})

    async def _submit(self, arrays: dict[str, npt.NDArray[Any]]) -> ModelOutput:
        if self._task is None or self._task.done():
            raise InferenceError("scorer not started")
        loop = asyncio.get_running_loop()
        pending = _Pending(arrays, loop.create_future())
        self._queue.put_nowait(pending)
        # A backstop: a caller never waits longer than every attempt of its own request
        # could take. It counts from when the request goes out, not from when it was
        # queued: a batch of many patients queues them all at once, and the last ones
        # would otherwise time out behind the first while Triton is merely busy.
        limit = self.timeout_seconds * (self.retries + 2) + 1.0
        while True:
            done, _ = await asyncio.wait({pending.future}, timeout=limit)
            if done:
                return pending.future.result()
            sent = pending.sent_at
            if sent is not None and time.monotonic() - sent >= limit:
                pending.future.cancel()
                raise InferenceError(f"no answer within {limit:.1f}s")

    def _arrays(
        self, window: FeatureWindow, images: Sequence[ImageInput]
    ) -> dict[str, npt.NDArray[Any]]:
        arrays: dict[str, npt.NDArray[Any]] = {
            "values": window.values,
            "mask": window.mask,
            "delta_hours": window.delta_hours,
            "statics": window.statics,
            "static_mask": window.static_mask,
        }
        arrays.update(self.image_arrays(images))
        return arrays

    # -- batching ------------------------------------------------------------------------

    async def _run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(_MAX_IN_FLIGHT)
        try:
            while True:
                batch = [await self._queue.get()]
                deadline = time.monotonic() + self.batch_max_wait
                # Drain without `wait_for(queue.get())`: on Python 3.11 a timeout racing a
                # completed get can drop the item, and its caller would wait forever.
                while len(batch) < self.batch_max_size:
                    try:
                        batch.append(self._queue.get_nowait())
                        continue
                    except asyncio.QueueEmpty:
                        pass
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, 0.001))
                await slots.acquire()
                task = asyncio.create_task(self._dispatch_guarded(batch))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            for task in in_flight:
                task.cancel()

    async def _dispatch_guarded(self, batch: list[_Pending]) -> None:
        try:
            await self._dispatch(batch)
        except Exception as exc:  # never let the batcher die
            log.exception("triton batch failed unexpectedly")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceError(f"unexpected: {exc!r}"))

    async def _dispatch(self, batch: list[_Pending]) -> None:
        batch = [item for item in batch if not item.future.done()]  # callers gone
        if not batch:
            return
        sent_at = time.monotonic()
        for item in batch:
            item.sent_at = sent_at
        try:
            outputs = await self._infer_with_retries([item.arrays for item in batch])
        except InferenceError as exc:
            invalid = "INVALID_ARG" in str(exc)
            if invalid and len(batch) > 1:
                # Split so the invalid patient fails alone and the others are scored.
                middle = len(batch) // 2
                await self._dispatch(batch[:middle])
                await self._dispatch(batch[middle:])
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for i, item in enumerate(batch):
            if item.future.done():
                continue
            extra = {
                k: v[i] for k, v in outputs.items() if k not in {"risk", "fused", "contributions"}
            }
            risk = (
                float(np.clip(outputs["risk"][i].reshape(-1)[0], 0.0, 1.0))
                if "risk" in outputs
                else float("nan")
            )
            item.future.set_result(
                ModelOutput(
                    risk=risk,
                    fused=(
                        outputs["fused"][i].astype(np.float32)
                        if "fused" in outputs
                        else np.zeros(0, dtype=np.float32)
                    ),
                    contributions=(
                        outputs["contributions"][i].astype(np.float32)
                        if "contributions" in outputs
                        else None
                    ),
                    extra=extra,
                )
            )

    async def _infer_with_retries(
        self, rows: list[dict[str, npt.NDArray[Any]]]
    ) -> dict[str, npt.NDArray[Any]]:
        client = self._require_client()
        inputs = []
        for name, (dtype, _dims) in self._inputs.items():
            stacked = np.stack([row[name] for row in rows]).astype(_np_dtype(dtype))
            tensor = InferInput(name, list(stacked.shape), dtype)
            tensor.set_data_from_numpy(stacked)
            inputs.append(tensor)
        requested = [InferRequestedOutput(name) for name in self._outputs]
        self.metrics.triton_batch.labels(self.model).observe(len(rows))
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await client.infer(
                    self.model,
                    inputs,
                    outputs=requested,
                    client_timeout=self.timeout_seconds,
                    # The same deadline for Triton's queue policy (REJECT): a request
                    # still queued when this client has given up is never computed.
                    timeout=int(self.timeout_seconds * 1_000_000),
                    headers=self._headers,
                )
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                transient = any(code in status for code in _TRANSIENT) or not status
                kind = status.removeprefix("StatusCode.").lower() or "unknown"
                self.metrics.inference_errors.labels(self.model, kind).inc()
                if transient and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                if transient:
                    self.breaker.record_failure()
                raise InferenceError(f"{status or 'error'}: {exc.message()}") from exc
            self.metrics.triton_latency.labels(self.model).observe(time.perf_counter() - started)
            self.breaker.record_success()
            out: dict[str, npt.NDArray[Any]] = {}
            for name in self._outputs:
                array = result.as_numpy(name)
                if array is None:
                    raise InferenceError(f"model returned no {name!r}")
                out[name] = array
            return out


_NP_DTYPES: dict[str, npt.DTypeLike] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BOOL": np.bool_,
}


def _np_dtype(triton_dtype: str) -> npt.DTypeLike:
    return _NP_DTYPES[triton_dtype]
