"""vigil.audit: verdicts from PyPI answers served by httpx's mock transport (no network),
plus one run against the real PyPI (marked integration)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from vigil.audit import (
    AcceptedFinding,
    Evidence,
    Installed,
    Status,
    installed_distributions,
    load_accepted,
    main,
    render,
    run_audit,
)
from vigil.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
REAL_CLIENT = httpx.Client  # before any test patches vigil.audit's

# Advisory entries in the shape of PyPI's JSON API ("vulnerabilities" list): the field
# names pip-audit's PyPI service reads. The ids are those of a real requests advisory
# (CVE-2024-35195, fixed in 2.32.0); the surrounding answers are trimmed test data.
ADVISORY_ID = "GHSA-9wx4-h78v-vm56"
ADVISORY = {
    "id": ADVISORY_ID,
    "aliases": ["CVE-2024-35195"],
    "details": "Session verify=False persists for the same origin.",
    "summary": None,
    "fixed_in": ["2.32.0"],
    "link": "https://osv.dev/vulnerability/GHSA-9wx4-h78v-vm56",
    "source": "osv",
    "withdrawn": None,
}
WITHDRAWN = {**ADVISORY, "id": "PYSEC-0000-1", "aliases": [], "withdrawn": "2024-06-01T00:00:00Z"}


def project(latest: str, vulnerabilities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A trimmed /pypi/<name>/json answer: info.version and the latest's advisories."""
    return {"info": {"version": latest}, "vulnerabilities": vulnerabilities or []}


Routes = Mapping[str, dict[str, Any] | int | Exception]


def pypi(routes: Routes, seen: list[str] | None = None) -> httpx.Client:
    """A client whose transport answers ``routes[path]``: JSON, a status, or an error."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request.url.path)
        answer = routes.get(request.url.path, 404)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer)
        return httpx.Response(200, json=answer)

    return REAL_CLIENT(base_url="https://pypi.test", transport=httpx.MockTransport(handle))


def accept(finding_id: str, package: str = "requests") -> AcceptedFinding:
    return AcceptedFinding(
        id=finding_id, package=package, reason="test", reviewer="tester", date=date(2026, 11, 30)
    )


REQUESTS_OLD = Installed("requests", "2.31.0")
REQUESTS_LATEST = Installed("requests", "2.32.3")


def by_name(routes: Routes, *dists: Installed, **kwargs: Any) -> dict[str, Any]:
    report = run_audit(pypi(routes), dists, kwargs.pop("accepted", []), **kwargs)
    return {"report": report, **{p.name: p for p in report.packages}}


def test_latest_release_without_advisories_is_evidence_for_no_known_vulnerability() -> None:
    out = by_name({"/pypi/requests/json": project("2.32.3")}, REQUESTS_LATEST)
    result = out["requests"]
    assert (result.status, result.evidence) == (Status.NO_KNOWN, Evidence.LATEST_RELEASE)
    assert out["report"].exit_status == 0


def test_advisory_of_the_installed_latest_release_fails_the_audit() -> None:
    routes = {"/pypi/requests/json": project("2.32.3", [ADVISORY, WITHDRAWN])}
    out = by_name(routes, REQUESTS_LATEST)
    result = out["requests"]
    assert result.status is Status.VULNERABLE
    assert [a.id for a in result.advisories] == ["GHSA-9wx4-h78v-vm56"]  # withdrawn left out
    assert out["report"].exit_status == 1


@pytest.mark.parametrize("finding_id", ["GHSA-9wx4-h78v-vm56", "CVE-2024-35195"])
def test_accepted_advisory_by_id_or_alias_passes_and_is_shown(finding_id: str) -> None:
    routes = {"/pypi/requests/json": project("2.32.3", [ADVISORY])}
    out = by_name(routes, REQUESTS_LATEST, accepted=[accept(finding_id)])
    assert out["requests"].status is Status.ACCEPTED
    assert out["report"].exit_status == 0
    assert out["report"].stale_accepted == []
    console = Console(record=True, width=200)
    render(out["report"], console)
    assert finding_id in console.export_text()


def test_acceptance_is_per_package() -> None:
    routes = {"/pypi/requests/json": project("2.32.3", [ADVISORY])}
    out = by_name(routes, REQUESTS_LATEST, accepted=[accept(ADVISORY_ID, "urllib3")])
    assert out["requests"].status is Status.VULNERABLE
    assert [a.package for a in out["report"].stale_accepted] == ["urllib3"]


def test_older_version_is_not_auditable_from_the_latest_releases_advisories() -> None:
    # The latest release's advisory "fixed in 2.32.0" would seem to cover 2.31.0, and an
    # empty list would seem to clear it: neither is evidence for 2.31.0.
    for vulnerabilities in ([ADVISORY], []):
        routes = {"/pypi/requests/json": project("2.32.3", vulnerabilities)}
        out = by_name(routes, REQUESTS_OLD)
        result = out["requests"]
        assert (result.status, result.evidence) == (Status.NOT_AUDITABLE, Evidence.NONE)
        assert result.advisories == ()
        assert "installed 2.31.0, latest 2.32.3" in result.detail
        assert out["report"].exit_status == 0


def test_per_version_service_is_probed_once_and_then_left_alone() -> None:
    seen: list[str] = []
    routes = {
        "/pypi/requests/json": project("2.32.3"),
        "/pypi/urllib3/json": project("2.2.3"),
        "/pypi/idna/json": project("3.10"),
    }
    dists = [REQUESTS_OLD, Installed("urllib3", "2.0.0"), Installed("idna", "3.10")]
    report = run_audit(pypi(routes, seen), dists, [], workers=1)
    versioned = [path for path in seen if path.count("/") == 4]
    assert versioned == ["/pypi/requests/2.32.3/json"]  # a release that exists
    assert report.version_service.startswith("HTTP 404")
    statuses = {p.name: p.status for p in report.packages}
    assert statuses == {
        "requests": Status.NOT_AUDITABLE,
        "urllib3": Status.NOT_AUDITABLE,
        "idna": Status.NO_KNOWN,
    }


def test_per_version_answers_are_exact_evidence_when_the_service_answers() -> None:
    routes = {
        "/pypi/requests/json": project("2.32.3"),
        "/pypi/requests/2.32.3/json": {"info": {"version": "2.32.3"}, "vulnerabilities": []},
        "/pypi/requests/2.31.0/json": {
            "info": {"version": "2.31.0"},
            "vulnerabilities": [ADVISORY],
        },
        "/pypi/idna/json": project("3.10"),
        "/pypi/idna/3.7/json": {"info": {"version": "3.7"}, "vulnerabilities": []},
    }
    out = by_name(routes, REQUESTS_OLD, Installed("idna", "3.7"))
    assert out["report"].version_service == "available"
    assert (out["requests"].status, out["requests"].evidence) == (
        Status.VULNERABLE,
        Evidence.VERSION_JSON,
    )
    assert (out["idna"].status, out["idna"].evidence) == (Status.NO_KNOWN, Evidence.VERSION_JSON)
    assert out["report"].exit_status == 1


def test_installed_version_unknown_to_the_per_version_service_is_not_auditable() -> None:
    routes = {
        "/pypi/torch/json": project("2.5.1"),
        "/pypi/torch/2.5.1/json": {"info": {"version": "2.5.1"}, "vulnerabilities": []},
    }
    out = by_name(routes, Installed("torch", "2.5.1+cpu"))  # a local label: another build
    assert out["torch"].status is Status.NOT_AUDITABLE
    assert "not on PyPI" in out["torch"].detail


def test_equal_versions_compare_by_pep_440() -> None:
    out = by_name({"/pypi/pyyaml/json": project("6.0.0")}, Installed("pyyaml", "6.0"))
    assert out["pyyaml"].evidence is Evidence.LATEST_RELEASE


def test_unreachable_pypi_means_the_audit_did_not_run() -> None:
    seen: list[str] = []
    routes: Routes = {
        "/pypi/requests/json": httpx.ConnectError("name does not resolve"),
        "/pypi/idna/json": project("3.10"),
    }
    report = run_audit(pypi(routes, seen), [REQUESTS_LATEST, Installed("idna", "3.10")], [])
    assert not report.pypi_reachable
    assert seen == ["/pypi/requests/json"] * 2  # one retry, then no other lookup
    assert {p.status for p in report.packages} == {Status.LOOKUP_FAILED}
    assert report.exit_status == 1
    console = Console(record=True, width=200)
    render(report, console)
    assert "did not run" in console.export_text()


def test_one_failed_lookup_makes_the_audit_incomplete() -> None:
    routes: dict[str, Any] = {"/pypi/requests/json": project("2.32.3"), "/pypi/idna/json": 503}
    out = by_name(routes, REQUESTS_LATEST, Installed("idna", "3.10"))
    assert out["report"].pypi_reachable
    assert out["idna"].status is Status.LOOKUP_FAILED
    assert out["report"].exit_status == 1


def test_unknown_project_and_local_install() -> None:
    seen: list[str] = []
    dists = [Installed("not-on-pypi", "1.0"), Installed("icu-vigil", "0.1.0", local=True)]
    report = run_audit(pypi({}, seen), dists, [])
    assert [p.status for p in report.packages] == [Status.NOT_ON_PYPI, Status.LOCAL]
    assert seen == ["/pypi/not-on-pypi/json"]  # the local one is never looked up
    assert report.exit_status == 0


def test_deadline_stops_lookups() -> None:
    out = by_name({"/pypi/requests/json": project("2.32.3")}, REQUESTS_LATEST, deadline_seconds=-1)
    assert out["requests"].status is Status.LOOKUP_FAILED
    assert out["requests"].detail.endswith("audit deadline passed")


def test_accepted_file(tmp_path: Path) -> None:
    assert load_accepted(REPO / "deploy" / "audit-accepted.toml") is not None  # parses
    good = tmp_path / "good.toml"
    good.write_text(
        '[[accepted]]\nid = "CVE-2024-35195"\npackage = "requests"\n'
        'reason = "test"\nreviewer = "tester"\ndate = 2026-11-30\n'
    )
    assert load_accepted(good) == [accept("CVE-2024-35195")]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accepted]]\nid = "CVE-2024-35195"\npackage = "requests"\n')
    with pytest.raises(ConfigError, match="reason"):
        load_accepted(bad)
    assert load_accepted(tmp_path / "missing.toml") == []


def test_installed_distributions_are_this_environments() -> None:
    found = {d.name: d for d in installed_distributions()}
    assert found["httpx"].version == httpx.__version__
    assert found["icu-vigil"].local  # the editable install of this repository
    assert len({name.lower() for name in found}) == len(found)


def test_main_writes_the_report_and_fails_on_bad_accepted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("accepted = [ {")
    assert main(["--accepted", str(bad), "--report", str(tmp_path / "r.json")]) == 2
    assert not (tmp_path / "r.json").exists()

    options: list[dict[str, Any]] = []

    def offline_client(**kwargs: Any) -> httpx.Client:  # every path answers 404
        options.append(kwargs)
        return pypi({})

    monkeypatch.setattr("vigil.audit.httpx.Client", offline_client)
    report_path = tmp_path / "out" / "audit.json"
    assert main(["--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert options[0]["base_url"] == "https://pypi.org"
    assert report["pypi_reachable"] is True
    statuses = {p["status"] for p in report["packages"]}
    assert statuses == {Status.NOT_ON_PYPI.value, Status.LOCAL.value}
    assert report["totals"]["packages"] == len(report["packages"])


@pytest.mark.integration
def test_audit_against_the_real_pypi(tmp_path: Path) -> None:
    """The real run: every verdict must rest on evidence for its exact version."""
    report_path = tmp_path / "audit.json"
    done = subprocess.run(
        [sys.executable, "-m", "vigil.audit", "--report", str(report_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    report = json.loads(report_path.read_text())
    assert report["pypi_reachable"], done.stdout
    assert done.returncode == report["exit_status"], done.stdout
    assert report["duration_seconds"] < 30
    for package in report["packages"]:
        if package["status"] == Status.NO_KNOWN.value:
            assert package["evidence"] in {
                Evidence.VERSION_JSON.value,
                Evidence.LATEST_RELEASE.value,
            }
        if package["evidence"] == Evidence.LATEST_RELEASE.value:
            assert package["installed"] == package["latest"]
    local = [p["name"] for p in report["packages"] if p["status"] == Status.LOCAL.value]
    assert local == ["icu-vigil"]
    assert "packages" in done.stdout
