"""Flower SecAgg+ in Vigil's federation, over real gRPC with TLS on loopback.

Four sites answer from threads of this process through the same relay and Flower
ClientApp (with ``secaggplus_mod``) the site processes use; their "training" returns
fixed random parameters so the expected aggregate is known exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flwr.app import Message
from flwr.client import NumPyClient
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from models.federated.relay import RelayServer, SiteLink, _decode, serve_site
from models.federated.rounds import run_rounds
from models.federated.simulate import fedavg
from models.federated.site import site_app
from models.federated.tls import RunCertificates, make_run_certificates
from vigil.errors import FederationError

SITES = ("a", "b", "c", "d")
WEIGHTS = {"a": 120, "b": 250, "c": 310, "d": 420}
SHAPES = ((16, 8), (64,), (4, 8, 4))  # 64+ values: chance correlations stay far below 0.6
MAX_WEIGHT = 1000.0
CLIP = 8.0
QUANTISATION = 2**22
Params = list[npt.NDArray[np.float32]]


def _updates(seed: int = 0) -> dict[str, Params]:
    rng = np.random.default_rng(seed)
    return {s: [rng.normal(0, 1.5, size).astype(np.float32) for size in SHAPES] for s in SITES}


class _Fixed(NumPyClient):
    def __init__(self, params: Params, weight: int) -> None:
        self.params, self.weight = params, weight

    def fit(self, parameters: Params, config: dict[str, Any]) -> tuple[Params, int, dict[str, Any]]:
        return self.params, self.weight, {}


def _tolerance(sites: list[str]) -> float:
    """SecAgg+'s quantisation error bound: each site's weighted vector is rounded to a
    grid of ``2·clip/2**22`` after scaling by ``weight/max_weight``; the sum is divided
    by the total scaled weight."""
    step = 2 * CLIP / QUANTISATION
    total_ratio = sum(WEIGHTS[s] for s in sites) / MAX_WEIGHT
    return 2 * len(sites) * step / total_ratio


@pytest.fixture(scope="module")
def certificates() -> RunCertificates:
    return make_run_certificates()


def _start(
    certs: RunCertificates,
    updates: dict[str, Params],
    secure: bool,
    drop: dict[str, Callable[[Message], bool]] | None = None,
) -> tuple[RelayServer, threading.Event, list[threading.Thread]]:
    server = RelayServer("127.0.0.1:0", (certs.server_certificate, certs.server_key), SITES)
    server.start()
    stop = threading.Event()
    threads = []
    for name in SITES:
        app = site_app(_Fixed(updates[name], WEIGHTS[name]), secure)
        link = SiteLink(f"127.0.0.1:{server.port}", certs.ca_certificate, name)
        kwargs: dict[str, Any] = {"stop": stop, "drop_after": (drop or {}).get(name)}
        thread = threading.Thread(target=serve_site, args=(link, app), kwargs=kwargs, daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + 20
    while len(server.sites) < len(SITES):
        assert time.monotonic() < deadline, "sites did not register"
        time.sleep(0.02)
    return server, stop, threads


@pytest.fixture
def federation(certificates: RunCertificates) -> Iterator[Callable[..., RelayServer]]:
    started: list[tuple[RelayServer, threading.Event, list[threading.Thread]]] = []

    def start(*args: Any, **kwargs: Any) -> RelayServer:
        started.append(_start(certificates, *args, **kwargs))
        return started[-1][0]

    yield start
    for server, stop, threads in started:
        stop.set()
        server.stop()
        for thread in threads:
            thread.join(timeout=5)


def _rounds(server: RelayServer, secure: bool, threshold: int = 3, timeout: float = 20.0) -> Params:
    zeros = [np.zeros(s, np.float32) for s in SHAPES]
    result = run_rounds(
        server.grid,
        zeros,
        sites=len(SITES),
        rounds=1,
        secure=secure,
        reconstruction_threshold=threshold,
        max_weight=MAX_WEIGHT,
        clipping_range=CLIP,
        timeout_seconds=timeout,
    )
    return result.parameters


def _gap(a: Params, b: Params) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_secure_aggregate_equals_fedavg(federation: Callable[..., RelayServer]) -> None:
    updates = _updates()
    expected = fedavg([updates[s] for s in SITES], [WEIGHTS[s] for s in SITES])
    secure = _rounds(federation(updates, True), secure=True)
    assert _gap(secure, expected) <= _tolerance(list(SITES))
    # not trivially close: the aggregate is far from any single site's parameters
    assert min(_gap(secure, updates[s]) for s in SITES) > 0.5
    plain = _rounds(federation(updates, False), secure=False)
    assert _gap(plain, expected) <= 1e-5


def _numeric_contents(data: bytes) -> list[npt.NDArray[np.float64]]:
    """Every array a received message carries: ArrayRecord arrays and the ndarrays
    serialised as bytes in SecAgg+'s ConfigRecord."""
    message = _decode(data)
    found: list[npt.NDArray[np.float64]] = []
    for record in message.content.array_records.values():
        found += [np.asarray(a.numpy(), dtype=np.float64) for a in record.values()]
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    for value in (configs or {}).values():
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            for item in value:
                try:
                    found.append(np.asarray(bytes_to_ndarray(item), dtype=np.float64))
                except Exception:  # noqa: BLE001, S112 - key shares and ciphertexts are not ndarrays
                    continue
    return found


def _reveals(array: npt.NDArray[np.float64], update: Params, weight: int) -> bool:
    """True if ``array`` equals a site's parameters, its weighted parameters or their
    SecAgg+ quantisation, or is strongly correlated with them."""
    for target in update:
        if array.size != target.size:
            continue
        flat = array.ravel()
        t = target.astype(np.float64).ravel()
        ratio = weight / MAX_WEIGHT
        quantised = np.round((np.clip(t * ratio, -CLIP, CLIP) + CLIP) / (2 * CLIP) * QUANTISATION)
        for candidate in (t, t * ratio, quantised):
            if np.allclose(flat, candidate, atol=1e-3):
                return True
            if flat.std() > 0 and abs(float(np.corrcoef(flat, candidate)[0, 1])) > 0.6:
                return True
    return False


def test_server_never_receives_a_single_site_update(federation: Callable[..., RelayServer]) -> None:
    updates = _updates(1)
    server = federation(updates, True)
    _rounds(server, secure=True)
    received = server.received
    assert len(received) == 4 * len(SITES)  # four SecAgg+ stages, every site answering
    for data in received:
        for array in _numeric_contents(data):
            for name in SITES:
                assert not _reveals(array, updates[name], WEIGHTS[name]), name
    # the check can fail: without SecAgg+ the server receives each site's parameters
    plain = federation(updates, False)
    _rounds(plain, secure=False)
    seen = [a for data in plain.received for a in _numeric_contents(data)]
    assert all(any(_reveals(a, updates[n], WEIGHTS[n]) for a in seen) for n in SITES)


def _drops_at_masking(message: Message) -> bool:
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs is not None and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS


def test_round_survives_one_dropout(federation: Callable[..., RelayServer]) -> None:
    updates = _updates(2)
    server = federation(updates, True, drop={"d": _drops_at_masking})
    got = _rounds(server, secure=True, threshold=3, timeout=3.0)
    survivors = ["a", "b", "c"]
    expected = fedavg([updates[s] for s in survivors], [WEIGHTS[s] for s in survivors])
    assert _gap(got, expected) <= _tolerance(survivors)


def test_round_below_threshold_fails_loudly(federation: Callable[..., RelayServer]) -> None:
    server = federation(_updates(3), True, drop={s: _drops_at_masking for s in ("c", "d")})
    with pytest.raises(FederationError, match="did not complete"):
        _rounds(server, secure=True, threshold=3, timeout=2.0)


def test_sites_refuse_a_server_outside_the_run_ca(certificates: RunCertificates) -> None:
    other = make_run_certificates()
    server = RelayServer("127.0.0.1:0", (other.server_certificate, other.server_key), SITES)
    server.start()
    try:
        link = SiteLink(f"127.0.0.1:{server.port}", certificates.ca_certificate, "a")
        app = site_app(_Fixed(_updates()["a"], 1), True)
        with pytest.raises(FederationError, match="did not answer"):
            serve_site(link, app, connect_timeout_seconds=2.0)
        assert server.sites == {}
    finally:
        server.stop()
