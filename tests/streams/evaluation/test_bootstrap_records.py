"""Bootstrap intervals are seeded and resample stays; recorded lines decode or are counted."""

from __future__ import annotations

import numpy as np
import pytest

from streams.core.risk_metrics import auprc, auroc
from streams.evaluation.bootstrap import discrimination
from streams.evaluation.records import decode_alerts, decode_scores

from .factory import alert, envelope, score


def _data(n: int = 200):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, n)
    scores = labels * 0.5 + rng.normal(0, 0.5, n)
    return labels, scores


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    labels, scores = _data()
    first = discrimination(labels, scores, n_resamples=200, seed=3)
    again = discrimination(labels, scores, n_resamples=200, seed=3)
    other = discrimination(labels, scores, n_resamples=200, seed=4)
    assert first == again
    assert first.auroc.low != other.auroc.low
    assert first.auroc.estimate == pytest.approx(auroc(labels, scores))
    assert first.auprc.estimate == pytest.approx(auprc(labels, scores))
    assert first.auroc.low < first.auroc.estimate < first.auroc.high
    assert first.auroc.resamples == 200


def test_rows_of_one_stay_are_resampled_together() -> None:
    # 20 stays of 10 identical rows: resampling stays gives the same interval as
    # resampling one row per stay, because every row of a drawn stay comes along.
    labels, scores = _data(20)
    per_stay = discrimination(labels, scores, n_resamples=100, seed=1)
    rows = discrimination(
        np.repeat(labels, 10),
        np.repeat(scores, 10),
        np.repeat(np.arange(20), 10),
        n_resamples=100,
        seed=1,
    )
    assert rows.n == 200
    assert rows.n_stays == 20
    assert rows.auroc.estimate == pytest.approx(per_stay.auroc.estimate)
    assert rows.auroc.low == pytest.approx(per_stay.auroc.low)
    assert rows.auroc.high == pytest.approx(per_stay.auroc.high)


def test_one_class_gives_no_interval() -> None:
    result = discrimination([0, 0, 0], [0.1, 0.2, 0.3], n_resamples=10)
    assert np.isnan(result.auroc.estimate)
    assert result.auroc.resamples == 0


def test_bare_records_and_envelopes_decode_bad_lines_are_counted() -> None:
    good = score("a", 1, 0.3)
    lines = [
        good.model_dump_json(),
        envelope(score("a", 2, 0.4), offset=7),
        "",  # blank: ignored
        "{not json",
        '{"patient_id": "a"}',  # a record with fields missing
        alert("a", 1).model_dump_json(),  # an alert is not a score
        '{"topic": "t", "partition": 0, "offset": 1, "value": 5}',  # envelope without JSON
    ]
    decoded = decode_scores(lines)
    assert [r.event_time for r in decoded.records] == [
        good.event_time,
        score("a", 2, 0.4).event_time,
    ]
    assert decoded.lines == 6
    assert decoded.bad_lines == 4
    assert decoded.errors[0].startswith("line 4: ")
    assert decoded.summary()["bad_lines"] == 4


def test_alert_envelopes_decode() -> None:
    decoded = decode_alerts([envelope(alert("a", 1), 0, topic="vigil.alerts").encode()])
    assert len(decoded.records) == 1
    assert decoded.bad_lines == 0
