"""Compact, versioned binary encoding of :class:`PatientState` (issue 15).

The Faust table and its changelog hold one value per patient. Version 1 of that value is
the JSON of :meth:`PatientState.to_dict` (12.6 / 24.1 / 28.2 KB p50 / p99 / max on the
demo stays); version 2 is a fixed header followed by packed arrays (2.8 / 5.4 / 6.4 KB,
see ``BENCHMARKS.md``); version 3, written here, is version 2 plus, when present, the step
model's state (:class:`~streams.core.stepping.ModelState`: about 2 KB more for
``deterioration_step``). :func:`decode_state` reads all three, so a running deployment
upgrades in place: states restored from old changelog records come back as they were and
are written back as version 3 on their next change.

Version 2 and 3 layout (little-endian; ``N`` series points, ``R`` remembered event ids, ``P``
pending provenance ids)::

    header   _HEADER: b"VPS", version (2), flags, time width, value scale exponent,
             admit / watermark / last scored / discharged ms, artifacts, time base, time
             unit (int64 each), then the byte or element counts of what follows (uint32)
    meta     compact JSON: patient id, series codes and point counts, statics, stream
             watermarks, pending offsets, studies, last score, alert
    times    N + R times (series points, then the remembered ids' times) as
             ``(t - base) / unit`` in uint16, uint32 or int64 (the narrowest that fits);
             ``unit`` is the gcd of the offsets (60,000 for minute-aligned stays)
    values   the N values as ``round(v * 10**e)`` in int16 where it fits, int32 where not,
             and raw float64 for any value that ``k / 10**e`` would not give back bit for
             bit; two bitmaps say which point is which
    ids      the R remembered ids then the P pending ids, newline-joined UTF-8 (JSON list
             if an id holds a newline or cannot be encoded), raw-deflated when long
    images   per image its time (int64) and length (uint32), then every embedding float64
    model    version 3, when ``flags & 128``: name length (uint16), admission ms and
             committed bin (int64), vector bytes (uint32), the name (UTF-8), the vector

Every field comes back equal to what was encoded (values bit for bit, dict orders kept),
so de-duplication, eviction order, features and NEWS2 are those of the original state.
Nested dicts go through JSON, exactly as they did in version 1 (tuples come back as lists).

The fixed header starts every record, so a sweep can read the two fields expiry needs
without decoding the rest: ``flags`` is the uint16 at byte 4, ``watermark_ms`` the int64
at byte 16 (set when ``flags & 2``), ``discharged_ms`` the int64 at byte 32 (set when
``flags & 8``).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streams.core.state import PatientState
from streams.core.stepping import ModelState
from vigil.errors import StateError

__all__ = ["STATE_FORMAT_VERSION", "decode_state", "encode_state"]

STATE_FORMAT_VERSION = 3
"""Version written by :func:`encode_state`; version 1 is the JSON of ``to_dict``; version
2 is version 3 without the step model's state (read as a state without one)."""
_READABLE_VERSIONS = frozenset({2, 3})

_MAGIC = b"VPS"
_HEADER = struct.Struct("<3sBHBB7q9I")
"""magic, version, flags, time width, value exponent; admit, watermark, last scored,
discharged, artifacts, time base, time unit; meta bytes, points, recent ids, pending ids,
float64 values, int32 values, id bytes, images, image floats."""

_HAS_ADMIT = 1
_HAS_WATERMARK = 2
_HAS_LAST_SCORED = 4
_HAS_DISCHARGED = 8
_CHANGED = 16
_IDS_JSON = 32
_IDS_DEFLATE = 64
_HAS_MODEL_STATE = 128
_MODEL_STATE = struct.Struct("<HqqI")
"""After the images (version 3, when flagged): model name length, admission ms, committed
bin, vector bytes; then the name (UTF-8) and the vector."""

_DEFLATE_FROM = 96
"""Id blobs at least this long are raw-deflated (level 1: ~9 µs for 4 KB, to 15 %)."""
_TIME_DTYPES: dict[int, np.dtype[Any]] = {
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<i8"),
}
_NEG_ZERO_BITS = np.int64(-(2**63))
_EXPONENTS = (0, 2, 3, 1)
"""Decimal scales tried, in order: integers, hundredths (two decimals, as PhysioNet and
most lab systems report), thousandths, tenths (only as the best of imperfect fits)."""
_MAX_EXPONENT = 3
_INT16_MAX = 32767.0
_INT32_MAX = 2147483647.0


def encode_state(state: PatientState) -> bytes:
    """The version-3 binary form of ``state`` (see the module docstring).

    Raises:
        StateError: A field cannot be encoded (a time outside int64, a non-JSON value
            in a nested dict).
    """
    try:
        return _encode(state)
    except (OverflowError, TypeError, ValueError, struct.error) as exc:
        raise StateError(f"cannot encode the state: {exc}") from exc


def decode_state(data: bytes | bytearray | memoryview | Mapping[str, Any]) -> PatientState:
    """Rebuild a state from its version-3 or version-2 binary form, or its version-1 JSON
    form.

    Args:
        data: What :func:`encode_state` returned; or a version-1 state, either as the
            already-parsed dict of :meth:`PatientState.to_dict` or as its JSON bytes.

    Raises:
        StateError: ``data`` is neither form, another version, truncated or inconsistent.
    """
    if isinstance(data, Mapping):
        return _from_v1(data)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StateError(f"a stored state is bytes or a dict, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    if view[:3] == _MAGIC:
        try:
            return _decode(view)
        except StateError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, struct.error, zlib.error) as exc:
            raise StateError(f"corrupt version-2 state: {exc}") from exc
    if bytes(view[:64]).lstrip()[:1] == b"{":
        try:
            parsed = json.loads(bytes(view))
        except ValueError as exc:
            raise StateError(f"a version-1 state that is not JSON: {exc}") from exc
        if not isinstance(parsed, Mapping):
            raise StateError("a version-1 state must be a JSON object")
        return _from_v1(parsed)
    raise StateError("not a stored patient state (no version-2 magic, not JSON)")


# -- version 1 ---------------------------------------------------------------------------------


def _from_v1(data: Mapping[str, Any]) -> PatientState:
    try:
        return PatientState.from_dict(data)
    except StateError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StateError(f"corrupt version-1 state: {exc!r}") from exc


# -- version 2: encode -------------------------------------------------------------------------


def _encode(state: PatientState) -> bytes:
    series = state.series
    counts = [len(points) for points in series.values()]
    times = [t for points in series.values() for t, _ in points]
    flat_values = [v for points in series.values() for _, v in points]
    # struct converts a list of floats twice as fast as np.array does.
    values = np.frombuffer(struct.pack(f"<{len(flat_values)}d", *flat_values), dtype="<f8")
    recent = state.recent_ids
    times.extend(recent.values())
    time_width, time_base, time_unit, time_bytes = _pack_times(np.array(times, dtype=np.int64))
    exponent, value_parts, n_float, n_wide = _pack_values(values)
    names = list(recent)
    names.extend(state.pending_ids)
    flags, ids = _pack_ids(names)
    image_bytes, n_image_floats = _pack_images(state.images)
    meta = json.dumps(
        [
            state.patient_id,
            list(series),
            counts,
            state.statics,
            state.stream_watermarks,
            state.pending_offsets,
            state.studies,
            state.last_score,
            state.alert,
        ],
        separators=(",", ":"),
    ).encode()
    model_bytes = _pack_model_state(state.model_state)
    flags |= (
        (_HAS_MODEL_STATE if model_bytes else 0)
        | (_HAS_ADMIT if state.admit_ms is not None else 0)
        | (_HAS_WATERMARK if state.watermark_ms is not None else 0)
        | (_HAS_LAST_SCORED if state.last_scored_ms is not None else 0)
        | (_HAS_DISCHARGED if state.discharged_ms is not None else 0)
        | (_CHANGED if state.changed else 0)
    )
    header = _HEADER.pack(
        _MAGIC,
        STATE_FORMAT_VERSION,
        flags,
        time_width,
        exponent,
        state.admit_ms or 0,
        state.watermark_ms or 0,
        state.last_scored_ms or 0,
        state.discharged_ms or 0,
        state.artifacts,
        time_base,
        time_unit,
        len(meta),
        len(values),
        len(recent),
        len(state.pending_ids),
        n_float,
        n_wide,
        len(ids),
        len(state.images),
        n_image_floats,
    )
    return b"".join((header, meta, time_bytes, *value_parts, ids, image_bytes, model_bytes))


def _pack_model_state(model_state: ModelState | None) -> bytes:
    if model_state is None:
        return b""
    name = model_state.model.encode()
    head = _MODEL_STATE.pack(
        len(name), model_state.admit_ms, model_state.bin, len(model_state.vector)
    )
    return b"".join((head, name, model_state.vector))


def _unpack_model_state(view: memoryview, at: int) -> tuple[ModelState, int]:
    name_len, admit_ms, bin_index, vector_len = _MODEL_STATE.unpack_from(view, at)
    at += _MODEL_STATE.size
    name = bytes(view[at : at + name_len]).decode()
    at += name_len
    vector = bytes(view[at : at + vector_len])
    if len(vector) != vector_len:
        raise StateError("truncated model state")
    at += vector_len
    return ModelState(model=name, admit_ms=admit_ms, bin=bin_index, vector=vector), at


def _pack_times(times: NDArray[np.int64]) -> tuple[int, int, int, bytes]:
    """``(width, base, unit, bytes)`` of ``times`` (int64 epoch ms) as ``(t - base) /
    unit`` in the narrowest unsigned width, or raw int64 when the span exceeds int64."""
    if times.size == 0:
        return 2, 0, 1, b""
    base = int(times.min())
    span = int(times.max()) - base
    if span >= 2**63:
        return 8, 0, 1, times.astype("<i8").tobytes()
    offsets = times - base
    unit = int(np.gcd.reduce(offsets)) or 1
    if unit > 1:
        offsets //= unit
        span //= unit
    width = 2 if span < 2**16 else 4 if span < 2**32 else 8
    return width, base, unit, offsets.astype(_TIME_DTYPES[width]).tobytes()


def _pack_values(values: NDArray[np.float64]) -> tuple[int, tuple[bytes, ...], int, int]:
    """``(exponent, parts, n_float, n_wide)``: each value as ``round(v * 10**exponent)`` in
    int16 or int32, or raw float64 where that would not give ``v`` back bit for bit.

    ``parts`` are the not-int16 bitmap (one bit per value), the float64 bitmap (one bit
    per not-int16 value), then the int16, int32 and float64 values, each in point order.
    """
    if values.size == 0:
        return 0, (), 0, 0
    # The first decimal scale of _EXPONENTS that represents every value exactly (hundredths
    # for the demo stays), else the one that represents the most; the rest are stored raw.
    best: tuple[int, int, NDArray[np.float64], NDArray[np.bool_]] | None = None
    with np.errstate(over="ignore", invalid="ignore"):
        for exponent in _EXPONENTS:
            scale = 10.0**exponent
            scaled = np.rint(values * scale) if exponent else np.rint(values)
            exact = (scaled / scale if exponent else scaled) == values
            if exact.all():
                best = (values.size, exponent, scaled, exact)
                break
            hits = int(np.count_nonzero(exact))
            if best is None or hits > best[0]:
                best = (hits, exponent, scaled, exact)
    if best is None:  # pragma: no cover - _EXPONENTS is not empty
        raise AssertionError("no decimal scale tried")
    _, exponent, scaled, exact = best
    magnitude = np.abs(scaled)
    exact &= magnitude <= _INT32_MAX
    exact &= values.view(np.int64) != _NEG_ZERO_BITS  # -0.0 would come back as 0.0
    narrow = exact & (magnitude <= _INT16_MAX)
    not_narrow = ~narrow
    raw = ~exact
    wide = exact & not_narrow
    return (
        exponent,
        (
            np.packbits(not_narrow, bitorder="little").tobytes(),
            np.packbits(raw[not_narrow], bitorder="little").tobytes(),
            scaled[narrow].astype("<i2").tobytes(),
            scaled[wide].astype("<i4").tobytes(),
            values[raw].astype("<f8").tobytes(),
        ),
        int(np.count_nonzero(raw)),
        int(np.count_nonzero(wide)),
    )


def _pack_ids(names: list[str]) -> tuple[int, bytes]:
    flags = 0
    try:
        blob = "\n".join(names).encode()
        plain = blob.count(b"\n") == max(len(names) - 1, 0)
    except UnicodeEncodeError:  # a lone surrogate: JSON escapes it
        plain = False
    if not plain:
        flags |= _IDS_JSON
        blob = json.dumps(names, separators=(",", ":")).encode()
    if len(blob) >= _DEFLATE_FROM:
        flags |= _IDS_DEFLATE
        blob = zlib.compress(blob, 1, -15)
    return flags, blob


def _pack_images(images: list[tuple[int, list[float]]]) -> tuple[bytes, int]:
    if not images:
        return b"", 0
    floats = [x for _, embedding in images for x in embedding]
    n = len(images)
    packed = struct.pack(
        f"<{n}q{n}I{len(floats)}d",
        *(t for t, _ in images),
        *(len(embedding) for _, embedding in images),
        *floats,
    )
    return packed, len(floats)


# -- version 2: decode -------------------------------------------------------------------------


def _decode(view: memoryview) -> PatientState:
    if len(view) < _HEADER.size:
        raise StateError(f"truncated state: {len(view)} bytes, header alone is {_HEADER.size}")
    (
        _,
        version,
        flags,
        time_width,
        exponent,
        admit_ms,
        watermark_ms,
        last_scored_ms,
        discharged_ms,
        artifacts,
        time_base,
        time_unit,
        meta_len,
        n_points,
        n_recent,
        n_pending,
        n_float,
        n_wide,
        ids_len,
        n_images,
        n_image_floats,
    ) = _HEADER.unpack_from(view)
    if version not in _READABLE_VERSIONS:
        raise StateError(f"unsupported state version {version}")
    if flags & _HAS_MODEL_STATE and version < 3:
        raise StateError("a version-2 state cannot hold a model state")
    if time_width not in _TIME_DTYPES or exponent > _MAX_EXPONENT:
        raise StateError(f"bad time width {time_width} or value exponent {exponent}")
    n_not_narrow = n_float + n_wide
    if n_not_narrow > n_points:
        raise StateError("more wide and raw values than points")
    at = _HEADER.size
    meta = json.loads(bytes(view[at : at + meta_len]))
    at += meta_len
    patient_id, codes, counts, statics, stream_marks, offsets, studies, last_score, alert = meta
    if len(codes) != len(counts) or sum(counts) != n_points:
        raise StateError("series codes and point counts disagree with the header")

    n_times = n_points + n_recent
    time_dtype = _TIME_DTYPES[time_width]
    times = _array(view, at, time_dtype, n_times).astype(np.int64)
    at += n_times * time_width
    if time_unit != 1:
        times = times * time_unit
    time_list = (times + time_base).tolist() if time_base else times.tolist()

    values, at = _unpack_values(view, at, exponent, n_points, n_float, n_wide)
    pairs = list(zip(time_list, values.tolist(), strict=False))
    series: dict[str, list[tuple[int, float]]] = {}
    first = 0
    for code, count in zip(codes, counts, strict=True):
        series[code] = pairs[first : first + count]
        first += count

    blob = bytes(view[at : at + ids_len])
    at += ids_len
    if flags & _IDS_DEFLATE:
        blob = zlib.decompress(blob, -15)
    n_names = n_recent + n_pending
    if flags & _IDS_JSON:
        names = json.loads(blob)
    elif n_names:
        names = blob.decode().split("\n")
    else:
        names = []
    if len(names) != n_names:
        raise StateError(f"{len(names)} event ids where the header says {n_names}")

    images: list[tuple[int, list[float]]] = []
    if n_images:
        fields = struct.unpack_from(f"<{n_images}q{n_images}I{n_image_floats}d", view, at)
        at += 12 * n_images + 8 * n_image_floats
        floats = fields[2 * n_images :]
        first = 0
        for t, length in zip(fields[:n_images], fields[n_images : 2 * n_images], strict=True):
            images.append((t, list(floats[first : first + length])))
            first += length
        if first != n_image_floats:
            raise StateError("image lengths disagree with the header")
    model_state = None
    if flags & _HAS_MODEL_STATE:
        model_state, at = _unpack_model_state(view, at)
    if at != len(view):
        raise StateError(f"state is {len(view)} bytes, its header describes {at}")

    return PatientState(
        patient_id=patient_id,
        admit_ms=admit_ms if flags & _HAS_ADMIT else None,
        statics=statics,
        series=series,
        watermark_ms=watermark_ms if flags & _HAS_WATERMARK else None,
        stream_watermarks=stream_marks,
        recent_ids=dict(zip(names[:n_recent], time_list[n_points:], strict=True)),
        last_scored_ms=last_scored_ms if flags & _HAS_LAST_SCORED else None,
        changed=bool(flags & _CHANGED),
        pending_ids=names[n_recent:],
        pending_offsets=offsets,
        discharged_ms=discharged_ms if flags & _HAS_DISCHARGED else None,
        images=images,
        studies=studies,
        last_score=last_score,
        alert=alert,
        artifacts=artifacts,
        model_state=model_state,
    )


def _unpack_values(
    view: memoryview, at: int, exponent: int, n_points: int, n_float: int, n_wide: int
) -> tuple[NDArray[np.float64], int]:
    """The float64 values written by :func:`_pack_values`, and the offset after them."""
    if n_points == 0:
        return np.empty(0, dtype=np.float64), at
    n_not_narrow = n_float + n_wide
    map_bytes = (n_points + 7) // 8
    not_narrow = _bits(view, at, n_points)
    at += map_bytes
    raw_in_not_narrow = _bits(view, at, n_not_narrow)
    at += (n_not_narrow + 7) // 8
    if int(np.count_nonzero(not_narrow)) != n_not_narrow:
        raise StateError("value bitmap disagrees with the header")
    if int(np.count_nonzero(raw_in_not_narrow)) != n_float:
        raise StateError("raw-value bitmap disagrees with the header")
    n_narrow = n_points - n_not_narrow
    narrow = _array(view, at, np.dtype("<i2"), n_narrow)
    at += 2 * n_narrow
    wide = _array(view, at, np.dtype("<i4"), n_wide)
    at += 4 * n_wide
    raw = _array(view, at, np.dtype("<f8"), n_float)
    at += 8 * n_float
    scale = 10.0**exponent
    if n_not_narrow == 0:
        values = narrow.astype(np.float64)
        return (values / scale if exponent else values), at
    values = np.zeros(n_points, dtype=np.float64)  # raw slots divided before they are set
    values[~not_narrow] = narrow
    where_not_narrow = np.flatnonzero(not_narrow)
    values[where_not_narrow[~raw_in_not_narrow]] = wide
    if exponent:
        values /= scale
    values[where_not_narrow[raw_in_not_narrow]] = raw
    return values, at


def _bits(view: memoryview, at: int, count: int) -> NDArray[np.bool_]:
    packed = _array(view, at, np.dtype(np.uint8), (count + 7) // 8)
    return np.unpackbits(packed, count=count, bitorder="little").view(np.bool_)


def _array(view: memoryview, at: int, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    if at + count * dtype.itemsize > len(view):
        raise StateError("truncated state")
    return np.frombuffer(view, dtype=dtype, count=count, offset=at)
