"""Imaging studies through the worker's agents, with the real Triton (model ``imaging``),
Redis and Kafka (the table's changelog), under Faust's agent test context (see
``test_agents.py`` for what that replaces).

**Test fixture:** ICU stays have no images, so these patients are synthetic vitals streams
and their studies are real images from the bundled samples (MSD lung CT patches of the
imaging model's test patients; PneumoniaMNIST validation X-rays), linked here by hand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis

from streams.app import VigilWorker
from streams.core.events import TopicKind
from streams.settings import WorkerSettings
from streams.wiring import create_worker
from tests.imaging_files import ct_patches, dicom_bytes, npz_bytes, png_bytes, xrays
from vigil.stack.settings import StackSettings

ADMIT = datetime(2025, 1, 1, tzinfo=UTC)
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "triton_repo" / "imaging" / "config.pbtxt"


def _shipped_parameter(name: str) -> float:
    """A parameter (lesion operating point, peak threshold) of the repository Triton serves."""
    text = SHIPPED_CONFIG.read_text()
    found = re.search(rf'key: "{name}"\s+value: \{{ string_value: "([\d.e-]+)" \}}', text)
    assert found is not None, name
    return float(found.group(1))


def _event(patient: str, minutes: int, suffix: str, **fields: Any) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"{patient}-{suffix}",
            "patient_id": patient,
            "event_time": (ADMIT + timedelta(minutes=minutes)).isoformat(),
            "source": "imaging-test",
            **fields,
        }
    ).encode()


def _admit(patient: str) -> bytes:
    return _event(patient, 0, "admit", action="admit", age_years=64, icu_type="medical")


def _vitals(patient: str, minutes: int) -> bytes:
    observations = [
        {"code": "HR", "value": 104 + minutes / 60, "unit": "/min"},
        {"code": "RespRate", "value": 22, "unit": "/min"},
        {"code": "SysABP", "value": 101, "unit": "mm[Hg]"},
        {"code": "SaO2", "value": 93, "unit": "%"},
        {"code": "Temp", "value": 38.1, "unit": "Cel"},
    ]
    return _event(patient, minutes, f"v{minutes}", observations=observations)


def _study(patient: str, minutes: int, study: str, modality: str, **where: Any) -> bytes:
    return _event(patient, minutes, f"img-{study}", study_id=study, modality=modality, **where)


def _drain(channel: Any) -> list[dict[str, Any]]:
    out = []
    while not channel.queue.empty():
        event = channel.queue.get_nowait()
        out.append(json.loads(event.value) if event.value else {})
    return out


async def _run(
    stack: StackSettings, unique: str, root: Path, studies: list[tuple[bytes, bytes]]
) -> tuple[VigilWorker, dict[str, list[dict[str, Any]]]]:
    settings = WorkerSettings(
        kafka_bootstrap=stack.kafka_bootstrap,
        triton_url=stack.triton_grpc_url,
        redis_url=stack.redis_url,
        topic_prefix=f"img{unique}",
        app_id=f"img{unique}",
        metrics_port=0,
        score_interval_seconds=0,  # every change is scored, so scores line up in time
        imaging_file_root=str(root),
        artifact_dir=str(root / "heatmaps"),
    )
    worker = create_worker(settings)
    app = worker.app
    app.finalize()
    app.flow_control.resume()
    worker.outputs = {kind: app.channel() for kind in worker.outputs}
    await app.producer.start()
    await worker.tables.changelog_topic.maybe_declare()
    assert worker.models.imager is not None
    assert worker.models.ood_scorer is not None
    assert worker.models.denoiser is not None  # asked only for low-dose CT studies
    scorers = worker.models.scorers()
    # scorer, explainer, step model and its explainer, ood, imaging, ct_denoise
    assert len(scorers) == 7
    for scorer in scorers:
        await scorer.start()
    await worker.store.start()
    worker.ready.set()
    received = {kind: ch.clone(is_iterator=True) for kind, ch in worker.outputs.items()}
    agents = {name.rsplit("-", 1)[-1]: agent for name, agent in app.agents.items()}
    out: dict[str, list[dict[str, Any]]] = {kind.value: [] for kind in received}

    async def feed(topic: str, records: list[tuple[bytes, bytes]]) -> None:
        # Outputs are collected per test context: a new context does not keep them.
        async with agents[topic].test_context() as agent:
            for key, value in records:
                await agent.put(key=key, value=value)
            await worker.drain()  # records are processed off the agent's loop
            for kind, channel in received.items():
                out[kind.value].extend(_drain(channel))

    patients = ("alpha", "beta", "gamma")
    try:
        await feed("adt", [(p.encode(), _admit(p)) for p in patients])
        await feed(
            "vitals", [(p.encode(), _vitals(p, m)) for m in (60, 120, 180) for p in patients]
        )
        await feed("imaging", studies)
        await feed("vitals", [(p.encode(), _vitals(p, 240)) for p in ("alpha", "beta")])
        return worker, out
    finally:
        await worker.store.close()
        for scorer in scorers:
            await scorer.close()
        await worker.models.images.close()
        await app.producer.stop()
        app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


def test_studies_become_findings_and_change_the_score(
    stack: StackSettings, unique: str, tmp_path: Path
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    ct, masks = ct_patches()
    xray, labels = xrays()
    # Alpha: a CT patch with tumour (test patient 7) as DICOM; beta, same vitals, no study.
    (root / "alpha.dcm").write_bytes(dicom_bytes(ct[0]))
    assert masks[0].sum() > 0
    # Gamma: a pneumonia X-ray (PNG file), a normal one from Redis, a clear CT patch inline.
    (root / "gamma.png").write_bytes(png_bytes(xray[int(np.argmax(labels == 1))]))
    redis_key = f"img{unique}:blob"
    redis.Redis.from_url(stack.redis_url).set(
        redis_key, png_bytes(xray[int(np.argmax(labels == 0))]), ex=600
    )
    # Bad studies: missing, not an image, outside the root, unsupported scheme.
    (root / "junk.dcm").write_bytes(b"this is not an image")
    inline = base64.urlsafe_b64encode(npz_bytes(ct[2])).decode()
    studies = [
        (b"alpha", _study("alpha", 200, "ct-1", "CT", image_uri=(root / "alpha.dcm").as_uri())),
        (b"gamma", _study("gamma", 190, "cr-1", "CR", image_uri=(root / "gamma.png").as_uri())),
        (b"gamma", _study("gamma", 191, "cr-2", "CR", image_uri=f"redis:///{redis_key}")),
        (b"gamma", _study("gamma", 192, "ct-3", "CT", inline_data=inline)),
        (b"gamma", _study("gamma", 193, "x-missing", "CT", image_uri=(root / "no.dcm").as_uri())),
        (b"gamma", _study("gamma", 194, "x-junk", "CT", image_uri=(root / "junk.dcm").as_uri())),
        (b"gamma", _study("gamma", 195, "x-outside", "CT", image_uri="file:///etc/hostname")),
        (b"gamma", _study("gamma", 196, "x-s3", "CT", image_uri="s3://bucket/study")),
        (b"gamma", _study("gamma", 190, "cr-1", "CR", image_uri=(root / "gamma.png").as_uri())),
    ]
    worker, out = asyncio.run(_run(stack, unique, root, studies))

    # Every readable study has a finding with a stored heatmap; a duplicate adds none.
    findings = {f["study_id"]: f for f in out[TopicKind.FINDINGS.value]}
    assert sorted(findings) == ["cr-1", "cr-2", "ct-1", "ct-3"]
    assert len(out[TopicKind.FINDINGS.value]) == 4
    for finding in findings.values():
        heatmap = Path(finding["heatmap_uri"].removeprefix("file://"))
        assert heatmap.name == f"{finding['finding_id']}.png"
        assert heatmap.read_bytes().startswith(b"\x89PNG")
        assert finding["model"] == "imaging"
        assert finding["mask_threshold"] == _shipped_parameter("mask_threshold")
        assert finding["lesion_peak_threshold"] == _shipped_parameter("lesion_peak_threshold")
    assert findings["ct-1"]["image_shape"] == [48, 48]
    assert findings["cr-1"]["image_shape"] == [28, 28]
    # The model's operating point was chosen for lesion recall on held-out patients
    # (docs/imaging.md): the tumour patch of a test patient shows a lesion.
    assert findings["ct-1"]["lesion_count"] >= 1
    assert findings["ct-1"]["lesion_area_fraction"] > 0
    # Pneumonia vs normal X-ray, both from the validation split.
    assert findings["cr-1"]["class_probability"] > findings["cr-2"]["class_probability"]

    # Bad studies are dead-lettered with the reason and their origin; nothing else is.
    dead = {json.loads(d["payload"])["study_id"]: d for d in out[TopicKind.DEADLETTER.value]}
    assert all(d["payload_encoding"] == "utf-8" for d in dead.values())
    assert {k: d["reason"] for k, d in dead.items()} == {
        "x-missing": "image_unavailable",
        "x-junk": "image_unreadable",
        "x-outside": "image_unavailable",
        "x-s3": "image_unavailable",
    }
    assert all(d["source_topic"] == worker.settings.topic("imaging") for d in dead.values())
    assert "outside VIGIL_IMAGING_FILE_ROOT" in dead["x-outside"]["detail"]

    scores: dict[str, list[dict[str, Any]]] = {}
    for score in out[TopicKind.SCORES.value]:
        scores.setdefault(score["patient_id"], []).append(score)
    assert all(not s["degraded"] for s in out[TopicKind.SCORES.value])
    # A study re-scores its patient at once, and the score cites it with its heatmap.
    at_study = [s for s in scores["alpha"] if s["event_time"].startswith("2025-01-01T03:20")]
    assert len(at_study) == 1
    assert [r["study_id"] for r in at_study[0]["imaging"]] == ["ct-1"]
    assert at_study[0]["imaging"][0]["heatmap_uri"] == findings["ct-1"]["heatmap_uri"]
    assert "alpha-img-ct-1" in at_study[0]["provenance"]["event_ids"]

    # Alpha and beta have identical vitals: identical risks before the study, different
    # risks after it (the study's embedding enters the deterioration model).
    def risk(patient: str, hhmm: str) -> float:
        (match,) = [s for s in scores[patient] if s["event_time"][11:16] == hhmm]
        return float(match["risk"])

    for hhmm in ("01:00", "02:00", "03:00"):
        assert abs(risk("alpha", hhmm) - risk("beta", hhmm)) < 1e-5
    assert abs(risk("alpha", "04:00") - risk("beta", "04:00")) > 1e-3
    # Gamma's scores after its studies cite the three readable ones, latest last.
    last = scores["gamma"][-1]
    assert [r["study_id"] for r in last["imaging"]] == ["cr-1", "cr-2", "ct-3"]
