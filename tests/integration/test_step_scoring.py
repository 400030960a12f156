"""The worker scoring with the step model (``VIGIL_TRITON_STEP_MODEL``), on the real Triton.

Real demo stays go through the worker's agents in event-time order, in batches; each score
advances the patient's stored model state through the bins that closed since its last
score. Checked: every score comes from ``deterioration_step`` (none degraded), the stored
state is versioned by the model and moves forward, and every streamed risk equals the
risk of the same observations stepped from an empty state offline (the exported
TorchScript through the Triton wrapper's own runner), so carrying the state across
records and batches changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from models.common.triton_model import Runner
from models.deterioration.step_export import MODEL_NAME
from streams.app import VigilWorker
from streams.core.events import TopicKind
from streams.core.pipeline import Processor, ProcessorConfig
from streams.core.state import Origin, PatientState, to_ms
from streams.core.step_features import BINS_PER_REQUEST, pack_bins
from streams.core.stepping import step_request
from streams.replay import ReplayEvent, physionet2012_events, read_length_of_stay
from streams.settings import WorkerSettings
from streams.wiring import create_worker
from vigil.stack.settings import StackSettings

pytestmark = [
    pytest.mark.integration,
    # torch 2.x marks torch.jit deprecated; TorchScript is what the Triton model loads.
    pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "physionet2012-demo"
MODEL_DIR = ROOT / "triton_repo" / MODEL_NAME
N_STAYS = 4
TOLERANCE = 1e-5


def _worker(stack: StackSettings, unique: str) -> VigilWorker:
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        triton_url=stack.triton_grpc_url,
        redis_url=stack.redis_url,
        topic_prefix=f"step{unique}",
        app_id=f"step{unique}",
        metrics_port=0,
        triton_step_model=MODEL_NAME,
        batch_max_records=64,  # several batches per stay
    )
    worker = create_worker(settings)
    worker.app.finalize()
    worker.app.flow_control.resume()
    worker.outputs = {kind: worker.app.channel() for kind in worker.outputs}
    return worker


async def _run(
    stack: StackSettings, unique: str
) -> tuple[list[dict[str, Any]], dict[str, Any], list[ReplayEvent]]:
    worker = _worker(stack, unique)
    app = worker.app
    await app.producer.start()
    await worker.tables.changelog_topic.maybe_declare()
    scorers = worker.models.scorers()
    for scorer in scorers:
        await scorer.start()
    await worker.store.start()
    await worker.use_step_model()
    assert worker.processor.step_model is not None, "deterioration_step is not served"
    worker.ready.set()
    received = worker.outputs[TopicKind.SCORES].clone(is_iterator=True)
    agents = {name.rsplit("-", 1)[-1]: agent for name, agent in app.agents.items()}
    paths = sorted((DEMO / "set-a").glob("*.txt"))[:N_STAYS]
    events = sorted(
        physionet2012_events(paths, length_of_stay=read_length_of_stay(DEMO / "Outcomes-a.txt"))
    )
    scores: list[dict[str, Any]] = []
    try:
        async with (
            agents["adt"].test_context() as adt,
            agents["vitals"].test_context() as vitals,
            agents["labs"].test_context() as labs,
        ):
            contexts = {"adt": adt, "vitals": vitals, "labs": labs}
            for event in events:
                if event.kind in contexts:
                    await contexts[event.kind].put(key=event.key, value=event.payload)
            await worker.drain()
        while not received.queue.empty():
            scores.append(json.loads(received.queue.get_nowait().value))
        states = {pid: worker.states.get(pid) for pid in {s["patient_id"] for s in scores}}
        return scores, states, events
    finally:
        await worker.store.close()
        for scorer in scorers:
            await scorer.close()
        await app.producer.stop()
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


def _runner() -> tuple[Runner, int]:
    config = _config()
    module = torch.jit.load(str(MODEL_DIR / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    module.eval()
    inputs = [(spec["name"], np.float32, tuple(spec["dims"])) for spec in config["input"]]
    outputs = [(spec["name"], np.float32) for spec in config["output"]]
    width = next(dims[0] for name, _, dims in inputs if name == "state")
    return Runner(module, inputs, outputs), width


def _config() -> dict[str, Any]:
    """The input and output specs of ``config.pbtxt`` (names and dims, in order)."""
    spec: dict[str, Any] = {"input": [], "output": []}
    section = None
    current: dict[str, Any] = {}
    for line in (MODEL_DIR / "config.pbtxt").read_text().splitlines():
        text = line.strip()
        if text.startswith(("input [", "output [")):
            section = text.split()[0]
        elif section and text.startswith("name:"):
            current = {"name": text.split('"')[1]}
        elif section and text.startswith("dims:"):
            current["dims"] = [int(d) for d in text.split("[")[1].split("]")[0].split(",")]
            spec[section].append(current)
        elif text == "]":
            section = None
    return spec


def _offline_risks(
    runner: Runner, width: int, scores: list[dict[str, Any]], events: list[ReplayEvent]
) -> list[float]:
    """Each score's risk recomputed offline: the events applied before it (those its own
    and the patient's earlier scores cite) go through a fresh :class:`Processor`, and the
    resulting observations are stepped from an empty state through the Triton wrapper's
    runner, ``BINS_PER_REQUEST`` bins per call."""
    processor = Processor(ProcessorConfig(), lambda: datetime(2026, 1, 1, tzinfo=UTC))
    states: dict[str, PatientState] = {}
    order = {json.loads(e.payload)["event_id"]: i for i, e in enumerate(events)}
    applied: set[str] = set()
    risks = []
    for score in scores:
        cited = sorted(set(score["provenance"]["event_ids"]) - applied, key=order.__getitem__)
        for event_id in cited:
            event = events[order[event_id]]
            kind = TopicKind(event.kind)
            processor.ingest(states, kind, event.key, event.payload, Origin(event.kind, 0, 0))
            applied.add(event_id)
        state = states[score["patient_id"]]
        risks.append(_from_scratch(runner, width, state, _parse(score["event_time"])))
    return risks


def _from_scratch(runner: Runner, width: int, state: PatientState, at: datetime) -> float:
    assert state.admit_ms is not None
    request = step_request(
        state.series, admit_ms=state.admit_ms, at_ms=to_ms(at), stored=None, model=None
    )
    vector = np.zeros((1, width), dtype=np.float32)
    closed = list(request.closed)
    statics, static_mask = _statics(state, at)
    while True:
        last = len(closed) <= BINS_PER_REQUEST - 1
        commit = closed if last else closed[:BINS_PER_REQUEST]
        bins = commit + ([request.open] if last and request.open is not None else [])
        values, mask, delta, valid = pack_bins(bins)
        out = runner.run(
            {
                "state": vector,
                "bins_values": values[None],
                "bins_mask": mask[None],
                "bins_delta_hours": delta[None],
                "bins_valid": valid[None],
                "commit_bins": np.array([[len(commit)]], dtype=np.float32),
                "statics": statics[None],
                "static_mask": static_mask[None],
                "image_embeddings": np.zeros((1, 4, 64), np.float32),
                "image_age_hours": np.zeros((1, 4), np.float32),
                "image_mask": np.zeros((1, 4), np.float32),
                "hours_since_seen": request.hours_since_seen[None],
            }
        )
        if last:
            return float(np.clip(out["risk"][0, 0], 0.0, 1.0))
        vector = out["state_out"]
        closed = closed[BINS_PER_REQUEST:]


def _statics(state: PatientState, at: datetime) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Statics as of the score (a weight measured later must not count)."""
    window = state.features(timedelta(hours=48), at=at)
    return window.statics, window.static_mask


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_step_scoring_matches_stepping_from_scratch(stack: StackSettings, unique: str) -> None:
    scores, states, events = asyncio.run(_run(stack, unique))
    assert len(scores) > 20 * N_STAYS
    assert {s["model"] for s in scores} == {MODEL_NAME}
    assert not [s for s in scores if s["degraded"]]
    for state in states.values():
        assert state is not None
        assert state.model_state is not None
        assert state.model_state.model.startswith(f"{MODEL_NAME}/")
        assert state.model_state.bin > 40  # 48-hour stays: the state moved through them
    runner, width = _runner()
    offline = _offline_risks(runner, width, scores, events)
    worst = max(abs(s["risk"] - r) for s, r in zip(scores, offline, strict=True))
    assert worst <= TOLERANCE, f"max |streamed - from scratch| = {worst:.3g}"
