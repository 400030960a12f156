"""The ward console without Kafka: settings, users file, the ward's picture of the outputs,
actions, and the web application's access control (sign-in, CSRF, lockout, roles, OIDC
redirect) through Starlette's in-process client."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr, ValidationError
from starlette.testclient import TestClient

from streams.console.actions import ActionError, build_ack
from streams.console.app import Console, build_app
from streams.console.audit import AuditTrail
from streams.console.auth import Lockout
from streams.console.feed import Hub
from streams.console.metrics import ConsoleMetrics
from streams.console.oidc import OidcClient, role_from_claims
from streams.console.settings import ConsoleSettings
from streams.console.users import UserStore
from streams.console.ward import Ward
from streams.core.events import AlertRecord, News2Score, Provenance, ScoreRecord
from vigil.cli import main
from vigil.errors import ConfigError

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ALERT_ID = "a" * 32
PASSWORD = "long enough password"  # noqa: S105 (a test user)
CHEAP = PasswordHasher(time_cost=1, memory_cost=8192)


def score(pid: str, minutes: float, risk: float | None, news2: int = 3) -> ScoreRecord:
    return ScoreRecord(
        patient_id=pid,
        event_time=T0 + timedelta(minutes=minutes),
        risk=risk,
        news2=News2Score(total=news2, band="low", parameters={"pulse": 1}),
        model="deterioration",
        model_version="1",
        degraded=risk is None,
        provenance=Provenance(code_version="test"),
        processing_time=T0 + timedelta(minutes=minutes, seconds=1),
    )


def alert(pid: str, state: str, severity: str = "high", produced_s: float = 0) -> AlertRecord:
    return AlertRecord(
        alert_id=ALERT_ID,
        patient_id=pid,
        event_time=T0 + timedelta(minutes=30),
        kind="deterioration",
        severity=severity,
        state=state,
        risk=0.5,
        news2=None,
        reason="risk_above_threshold",
        explanation="model risk 0.50",
        policy_version="test",
        degraded=False,
        processing_time=T0 + timedelta(seconds=produced_s),
    )


# --- settings ------------------------------------------------------------------------------


def test_defaults_are_loopback_on_8088(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ConsoleSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8088)
    assert not settings.tls
    monkeypatch.setenv("VIGIL_CONSOLE_PORT", "9099")
    monkeypatch.setenv("VIGIL_CONSOLE_SESSION_SECRET", "x" * 40)
    settings = ConsoleSettings()
    assert settings.port == 9099
    assert "x" * 40 not in repr(settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"host": "0.0.0.0"}, "off loopback needs TLS"),  # noqa: S104
        ({"tls_certfile": Path(__file__)}, "go together"),
        ({"oidc_issuer": "https://idp.example"}, "OIDC needs"),
        ({"oidc_issuer": "http://idp.example"}, "pattern"),
        ({"session_secret": SecretStr("short")}, "at least 32"),
    ],
)
def test_unsafe_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConsoleSettings(**values)


# --- users ---------------------------------------------------------------------------------


def test_users_file_hashes_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store = UserStore(path, CHEAP)
    assert store.add("dr.a", "clinician", PASSWORD) is False
    assert store.add("dr.a", "admin", PASSWORD) is True
    text = path.read_text()
    assert PASSWORD not in text
    assert "$argon2id$" in text
    assert path.stat().st_mode & 0o777 == 0o600
    fresh = UserStore(path, CHEAP)
    user = fresh.verify("dr.a", PASSWORD)
    assert user is not None
    assert user.role == "admin"
    assert fresh.verify("dr.a", "wrong password!") is None
    assert fresh.verify("nobody", PASSWORD) is None
    with pytest.raises(ConfigError, match="at least 10"):
        store.add("dr.b", "viewer", "short")
    with pytest.raises(ConfigError, match="invalid role"):
        store.add("dr.b", "nurse", PASSWORD)
    with pytest.raises(ConfigError, match="invalid user name"):
        store.add("../x", "viewer", PASSWORD)


def test_cli_add_user_reads_the_password_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.json"
    monkeypatch.setenv("VIGIL_CONSOLE_USERS_FILE", str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["console", "add-user", "nurse.b", "--role", "viewer"]) == 0
    assert UserStore(path).verify("nurse.b", PASSWORD) is not None
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["console", "add-user", "nurse.c", "--role", "viewer"]) == 2
    assert "at least 10" in capsys.readouterr().err


# --- the ward ------------------------------------------------------------------------------


def test_ward_rows_sort_filter_and_keep_order() -> None:
    ward = Ward()
    ward.add_score(score("p1", 0, 0.1))
    ward.add_score(score("p1", 60, 0.3))
    ward.add_score(score("p1", 30, 0.2))  # late: joins the trend, not the latest
    ward.add_score(score("p2", 50, 0.9, news2=9))
    ward.add_score(score("p3", 55, None, news2=0))  # degraded; zero is a value
    ward.add_alert(alert("p1", "open", produced_s=1))
    ward.add_alert(alert("p1", "acknowledged", produced_s=3))
    ward.add_alert(alert("p1", "open", produced_s=2))  # produced before the ack: ignored
    p1 = ward.patients["p1"]
    assert p1.latest is not None
    assert p1.latest.risk == 0.3
    assert [p.risk for p in p1.trend] == [0.1, 0.2, 0.3]
    assert p1.alerts[ALERT_ID].state == "acknowledged"
    rows = ward.rows()
    assert [r.patient_id for r in rows] == ["p1", "p2", "p3"]  # alerting first
    assert rows[0].status == "acknowledged"
    assert rows[0].since_seconds == 0
    assert rows[1].since_seconds == 600
    assert rows[2].news2_total == 0
    assert rows[2].degraded
    assert [r.patient_id for r in ward.rows(sort="risk")] == ["p2", "p1", "p3"]
    assert [r.patient_id for r in ward.rows(severity="high")] == ["p1"]
    assert ward.rows(severity="review") == []
    with pytest.raises(ValueError, match="unknown sort"):
        ward.rows(sort="bogus")
    ward.add_alert(alert("p1", "resolved", produced_s=4))
    assert ward.rows()[0].patient_id == "p2"


def test_trend_keeps_the_window_and_capacity() -> None:
    ward = Ward(history=timedelta(hours=1), max_patients=2)
    for minutes in range(0, 180, 10):
        ward.add_score(score("p1", minutes, 0.5))
    assert ward.patients["p1"].trend[0].at == T0 + timedelta(minutes=110)
    ward.add_score(score("p2", 0, 0.5))
    ward.add_score(score("p3", 200, 0.5))
    assert set(ward.patients) == {"p1", "p3"}  # p2, silent longest, went


# --- actions -------------------------------------------------------------------------------


def test_build_ack_checks_the_form() -> None:
    ack = build_ack(
        patient_id="p1",
        alert_id=ALERT_ID,
        action="snooze",
        user="dr.a",
        reason=" at the bedside ",
        snooze_minutes="30",
        at=T0,
    )
    assert ack.snooze_until == T0 + timedelta(minutes=30)
    assert ack.reason == "at the bedside"
    assert ack.user == "dr.a"
    for action, reason, minutes, message in [
        ("resolve", "r", None, "unknown action"),
        ("acknowledge", "  ", None, "reason is required"),
        ("snooze", "r", "5", "snooze_minutes"),
        ("snooze", "r", None, "snooze_minutes"),
    ]:
        with pytest.raises(ActionError, match=message):
            build_ack(
                patient_id="p1",
                alert_id=ALERT_ID,
                action=action,
                user="dr.a",
                reason=reason,
                snooze_minutes=minutes,
                at=T0,
            )


def test_lockout_counts_failures_in_a_window() -> None:
    now = [0.0]
    lockout = Lockout(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert not lockout.locked("user:a")
        lockout.fail("user:a", "client:x")
    assert lockout.locked("user:a")
    assert lockout.locked("user:b", "client:x")
    now[0] = 61
    assert not lockout.locked("user:a")


def test_oidc_roles_from_claims() -> None:
    assert role_from_claims({"vigil_role": ["viewer", "clinician"]}, "vigil_role", "none") == (
        "clinician"
    )
    assert role_from_claims({"vigil_role": "admin"}, "vigil_role", "none") == "admin"
    assert role_from_claims({}, "vigil_role", "none") is None
    assert role_from_claims({"vigil_role": "root"}, "vigil_role", "viewer") == "viewer"


# --- the web application ---------------------------------------------------------------------


def _app(tmp_path: Path, **settings: Any) -> tuple[TestClient, Console]:
    values: dict[str, Any] = {
        "users_file": tmp_path / "users.json",
        "audit_file": tmp_path / "audit.jsonl",
        "max_failed_logins": 3,
        **settings,
    }
    config = ConsoleSettings(**values)
    users = UserStore(config.users_file, CHEAP)
    users.add("dr.a", "clinician", PASSWORD)
    users.add("v.b", "viewer", PASSWORD)
    ward = Ward()
    ward.add_score(score("p1", 0, 0.7))
    ward.add_alert(alert("p1", "open"))
    console = Console(
        settings=config,
        users=users,
        audit=AuditTrail(config.audit_file),
        ward=ward,
        hub=Hub(),
        metrics=ConsoleMetrics(),
        lockout=Lockout(config.max_failed_logins, 600),
        oidc=OidcClient(config) if config.oidc else None,
    )
    return TestClient(build_app(console), base_url="http://127.0.0.1:8088"), console


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def _login(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    token = _token(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


def test_signed_out_gets_no_patient_data(tmp_path: Path) -> None:
    client, _ = _app(tmp_path)
    for path in ("/", "/patients/p1", "/patients/nobody"):
        response = client.get(path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/login")
        assert "p1" not in response.text
    assert client.get("/events").status_code == 401
    assert client.get("/patients/p1/findings/" + "0" * 32 + ".png").status_code == 401
    login = client.get("/login")
    assert "p1" not in login.text
    assert client.get("/health").json() == {"status": "ok", "patients": 1}


def test_sign_in_board_patient_and_sign_out_audited(tmp_path: Path) -> None:
    client, console = _app(tmp_path)
    response = _login(client, "dr.a")
    assert (response.status_code, response.headers["location"]) == (303, "/")
    board = client.get("/")
    assert board.status_code == 200
    assert "p1" in board.text
    assert "▲</span> HIGH" in board.text
    assert "default-src 'self'" in board.headers["content-security-policy"]
    assert client.get("/?severity=purple").status_code == 400
    patient = client.get("/patients/p1")
    assert "Acknowledge" in patient.text
    assert client.get("/patients/p9").status_code == 404
    # No CSRF token: refused, and nothing published.
    refused = client.post(
        f"/patients/p1/alerts/{ALERT_ID}/actions", data={"action": "acknowledge", "reason": "r"}
    )
    assert refused.status_code == 403
    token = _token(patient.text)
    bad = client.post(
        f"/patients/p1/alerts/{ALERT_ID}/actions",
        data={"action": "snooze", "reason": "r", "snooze_minutes": "7", "csrf_token": token},
    )
    assert (bad.status_code, bad.text) == (
        400,
        "snooze_minutes must be one of 15, 30, 60, 120, 240",
    )
    unknown = client.post(
        f"/patients/p1/alerts/{'b' * 32}/actions",
        data={"action": "acknowledge", "reason": "r", "csrf_token": token},
    )
    assert unknown.status_code == 404
    assert (
        client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code
        == 303
    )
    assert client.get("/", follow_redirects=False).status_code == 303
    events = [(r["event"], r["outcome"]) for r in console.audit.read()]
    assert events == [("sign_in", "ok"), ("alert_action", "refused_csrf"), ("sign_out", "ok")]


def test_viewer_cannot_act(tmp_path: Path) -> None:
    client, console = _app(tmp_path)
    _login(client, "v.b")
    patient = client.get("/patients/p1")
    assert "Acknowledge" not in patient.text
    response = client.post(
        f"/patients/p1/alerts/{ALERT_ID}/actions",
        data={"action": "acknowledge", "reason": "r", "csrf_token": _token(patient.text)},
    )
    assert response.status_code == 403
    assert console.audit.read()[-1]["outcome"] == "forbidden"


def test_failed_sign_ins_lock_out_and_are_audited(tmp_path: Path) -> None:
    client, console = _app(tmp_path)
    for _ in range(3):
        assert _login(client, "dr.a", "wrong password!").status_code == 401
    assert _login(client, "dr.a").status_code == 429  # locked even with the right password
    outcomes = [r["outcome"] for r in console.audit.read()]
    assert outcomes == ["failed", "failed", "failed", "locked"]
    cross_site = client.post(
        "/login",
        data={"username": "v.b", "password": PASSWORD},
        headers={"origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403


def test_oidc_redirects_to_the_provider_without_network(tmp_path: Path) -> None:
    metadata = tmp_path / "openid-configuration.json"
    metadata.write_text(
        json.dumps(
            {
                "issuer": "https://idp.example.test",
                "authorization_endpoint": "https://idp.example.test/authorize",
                "token_endpoint": "https://idp.example.test/token",
                "jwks_uri": "https://idp.example.test/jwks",
            }
        )
    )
    client, _ = _app(
        tmp_path,
        oidc_issuer="https://idp.example.test",
        oidc_client_id="vigil-console",
        oidc_client_secret=SecretStr("client-secret"),
        oidc_metadata_file=metadata,
    )
    assert "single sign-on" in client.get("/login").text
    response = client.get("/login/oidc", follow_redirects=False)
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == "https://idp.example.test/authorize"
    query = parse_qs(target.query)
    assert query["client_id"] == ["vigil-console"]
    assert query["response_type"] == ["code"]
    assert "openid" in query["scope"][0]
    assert query["redirect_uri"] == ["http://127.0.0.1:8088/auth/callback"]
    assert query["state"][0]
    assert query["nonce"][0]
    # A callback whose state the session does not hold is refused (and audited).
    forged = client.get("/auth/callback?code=x&state=forged", follow_redirects=False)
    assert forged.status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 303


def test_heatmap_overlay_reads_only_inside_its_folders(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from streams.console.images import overlay_png
    from streams.core.events import FindingRecord

    artifacts, images = tmp_path / "heatmaps", tmp_path / "imaging"
    artifacts.mkdir()
    images.mkdir()
    heat = np.zeros((8, 8), dtype=np.uint8)
    heat[2:4, 2:4] = 255
    Image.fromarray(heat).save(artifacts / "f.png")
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(images / "study.png")
    Image.fromarray(heat).save(tmp_path / "elsewhere.png")

    def finding(heatmap: Path) -> FindingRecord:
        return FindingRecord(
            finding_id="f" * 32,
            patient_id="p1",
            study_id="s1",
            event_id="e1",
            event_time=T0,
            modality="CR",
            model="imaging",
            model_version="1",
            class_probability=0.8,
            lesion_count=1,
            lesion_area_fraction=0.05,
            mask_threshold=0.5,
            heatmap_uri=heatmap.as_uri(),
            image_shape=(16, 16),
            provenance=Provenance(code_version="test"),
            processing_time=T0,
        )

    png = overlay_png(
        finding(artifacts / "f.png"), (images / "study.png").as_uri(), artifacts, images
    )
    assert png is not None
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert pixels.shape == (8, 8, 3)
    assert pixels[3, 3, 0] > pixels[3, 3, 1]  # hot: red over the grey image
    assert pixels[0, 0, 0] == pixels[0, 0, 1] == 128  # cold: the image itself
    assert overlay_png(finding(tmp_path / "elsewhere.png"), None, artifacts, images) is None
    outside = overlay_png(
        finding(artifacts / "f.png"), (tmp_path / "elsewhere.png").as_uri(), artifacts, images
    )
    assert outside is not None
    assert np.asarray(Image.open(io.BytesIO(outside)))[0, 0, 0] == 0  # image refused: black
