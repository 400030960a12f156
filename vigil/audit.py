"""Known vulnerabilities of the installed packages, from the evidence PyPI gives here.

``python -m vigil.audit`` looks up every distribution installed in the running
interpreter's environment (``importlib.metadata``) and decides, per package, what can be
said about its *installed* version, from the best evidence that answers:

1. ``/pypi/<name>/<version>/json`` (the service pip-audit uses): its ``vulnerabilities``
   are those of exactly that version. Probed once, with a release known to exist; if the
   probe fails, the service is marked unavailable and never asked again.
2. ``/pypi/<name>/json`` when the installed version *is* the latest release: that answer's
   ``vulnerabilities`` describe the latest release, so they apply exactly.
3. Otherwise nothing: the project answer's advisories are about the latest release, and
   their ``fixed_in`` lists cannot show that an older version is clean, so the package is
   reported as not auditable from here (installed X, latest Y).

"No known vulnerability" is reported only with evidence 1 or 2. Accepted findings live in
one TOML file (``deploy/audit-accepted.toml``). Exit status: 1 when an advisory applies to
an installed version and is not accepted, when PyPI could not be reached at all, or when a
lookup failed (the audit is incomplete); 0 otherwise, with the number of packages that
could not be audited printed. Nothing is cached between runs.

Errors: a malformed accepted-findings file raises :class:`vigil.errors.ConfigError`.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from vigil.errors import ConfigError

__all__ = [
    "AcceptedFinding",
    "Advisory",
    "AuditReport",
    "Evidence",
    "Installed",
    "PackageResult",
    "Status",
    "installed_distributions",
    "load_accepted",
    "main",
    "run_audit",
]


class Evidence(StrEnum):
    """What a package's verdict rests on."""

    VERSION_JSON = "version-json"  # /pypi/<name>/<version>/json: this exact version
    LATEST_RELEASE = "latest-release"  # /pypi/<name>/json, installed == latest release
    NONE = "none"


class Status(StrEnum):
    """Verdict for one installed distribution."""

    NO_KNOWN = "no known vulnerability"  # evidence for this exact version, no advisory
    VULNERABLE = "VULNERABLE"  # an advisory applies and is not accepted
    ACCEPTED = "accepted"  # every applying advisory is in the accepted file
    NOT_AUDITABLE = "not auditable"  # no evidence for this version reachable from here
    NOT_ON_PYPI = "not on PyPI"  # PyPI does not know the project (or this version)
    LOCAL = "local"  # installed from a local directory or file: not looked up
    LOOKUP_FAILED = "lookup failed"  # PyPI did not answer for this package


@dataclass(frozen=True)
class Installed:
    """An installed distribution; ``local`` when it came from a path, not an index."""

    name: str
    version: str
    local: bool = False


@dataclass(frozen=True)
class Advisory:
    """One entry of PyPI's ``vulnerabilities`` list."""

    id: str
    aliases: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()
    link: str | None = None

    def matches(self, finding_id: str) -> bool:
        return finding_id == self.id or finding_id in self.aliases


@dataclass(frozen=True)
class PackageResult:
    """What the audit says about one installed distribution."""

    name: str
    installed: str
    latest: str | None
    status: Status
    evidence: Evidence
    advisories: tuple[Advisory, ...] = ()
    detail: str = ""


class AcceptedFinding(BaseModel):
    """A reviewed advisory that does not fail the audit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    package: str
    reason: str
    reviewer: str
    date: date


@dataclass
class AuditReport:
    """Every package's verdict plus what was reachable."""

    pypi_reachable: bool
    version_service: str  # "available" or why it is not
    packages: list[PackageResult]
    accepted: list[AcceptedFinding]
    stale_accepted: list[AcceptedFinding] = field(default_factory=list)
    duration_seconds: float = 0.0

    def totals(self) -> dict[str, int]:
        counts = Counter(p.status.value for p in self.packages)
        by_evidence = Counter(p.evidence.value for p in self.packages)
        return {
            "packages": len(self.packages),
            **counts,
            **{f"evidence {k}": v for k, v in by_evidence.items()},
        }

    @property
    def exit_status(self) -> int:
        failed = {Status.VULNERABLE, Status.LOOKUP_FAILED}
        return 1 if not self.pypi_reachable or any(p.status in failed for p in self.packages) else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": datetime.now(UTC).isoformat(),
            "pypi_reachable": self.pypi_reachable,
            "version_service": self.version_service,
            "duration_seconds": round(self.duration_seconds, 2),
            "exit_status": self.exit_status,
            "totals": self.totals(),
            "packages": [asdict(p) for p in self.packages],
            "accepted": [a.model_dump(mode="json") for a in self.accepted],
            "stale_accepted": [a.model_dump(mode="json") for a in self.stale_accepted],
        }


def installed_distributions() -> list[Installed]:
    """Distributions in this interpreter's site-packages, one per canonical name."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found: dict[str, Installed] = {}
    for dist in metadata.distributions(path=paths):
        name = dist.metadata["Name"]
        if name is None or canonicalize_name(name) in found:
            continue
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
        local = "dir_info" in direct_url or str(direct_url.get("url", "")).startswith("file:")
        found[canonicalize_name(name)] = Installed(name, dist.version, local)
    return sorted(found.values(), key=lambda d: canonicalize_name(d.name))


def load_accepted(path: Path) -> list[AcceptedFinding]:
    """Read ``[[accepted]]`` tables from ``path``; a missing file means none."""
    if not path.exists():
        return []
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return [AcceptedFinding.model_validate(item) for item in raw.get("accepted", [])]
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_advisories(payload: Mapping[str, Any]) -> tuple[Advisory, ...]:
    """The advisories of a PyPI JSON answer, withdrawn ones left out."""
    return tuple(
        Advisory(
            id=str(v["id"]),
            aliases=tuple(v.get("aliases") or ()),
            fixed_in=tuple(v.get("fixed_in") or ()),
            link=v.get("link"),
        )
        for v in payload.get("vulnerabilities") or ()
        if v.get("withdrawn") is None
    )


def same_version(a: str, b: str) -> bool:
    """PEP 440 equality (``2.0 == 2.0.0``); a local label (``+cpu``) makes it differ."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def judge(
    dist: Installed,
    latest: str,
    advisories: tuple[Advisory, ...],
    evidence: Evidence,
    accepted: Sequence[AcceptedFinding],
) -> PackageResult:
    """Verdict for ``dist`` given advisories that apply to exactly its version."""
    if not advisories:
        return PackageResult(dist.name, dist.version, latest, Status.NO_KNOWN, evidence)
    mine = [a for a in accepted if canonicalize_name(a.package) == canonicalize_name(dist.name)]
    unaccepted = [adv for adv in advisories if not any(adv.matches(a.id) for a in mine)]
    status = Status.VULNERABLE if unaccepted else Status.ACCEPTED
    return PackageResult(dist.name, dist.version, latest, status, evidence, advisories)


@dataclass(frozen=True)
class _Answer:
    status: int | None  # HTTP status, None when nothing answered
    payload: Mapping[str, Any] | None = None
    error: str = ""


class _PyPI:
    def __init__(self, client: httpx.Client, deadline: float) -> None:
        self._client = client
        self._deadline = deadline

    def get(self, path: str) -> _Answer:
        """GET ``path``; a transport error, 429 or 5xx is tried once more."""
        answer = _Answer(None, error="not tried")
        for _ in range(2):
            if time.monotonic() > self._deadline:
                return _Answer(None, error="audit deadline passed")
            try:
                response = self._client.get(path)
            except httpx.HTTPError as exc:
                answer = _Answer(None, error=f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code == 200:
                return _Answer(200, response.json())
            answer = _Answer(response.status_code, error=f"HTTP {response.status_code}")
            if response.status_code != 429 and response.status_code < 500:
                break
        return answer


def _verdict(
    dist: Installed,
    project: _Answer | None,
    version: _Answer | None,
    accepted: Sequence[AcceptedFinding],
) -> PackageResult:
    """Verdict from the project answer and, when the service was asked, the version answer."""
    name, installed = dist.name, dist.version
    if project is None:
        why = "installed from a local path, not looked up"
        return PackageResult(name, installed, None, Status.LOCAL, Evidence.NONE, detail=why)
    if project.status == 404:
        why = "project not on PyPI"
        return PackageResult(name, installed, None, Status.NOT_ON_PYPI, Evidence.NONE, detail=why)
    if project.payload is None:
        failed = Status.LOOKUP_FAILED
        return PackageResult(name, installed, None, failed, Evidence.NONE, detail=project.error)
    latest = str(project.payload["info"]["version"])
    if version is not None and version.payload is not None:
        advisories = parse_advisories(version.payload)
        return judge(dist, latest, advisories, Evidence.VERSION_JSON, accepted)
    if version is not None and version.status != 404:
        failed = Status.LOOKUP_FAILED
        return PackageResult(name, installed, latest, failed, Evidence.NONE, detail=version.error)
    if same_version(installed, latest):
        advisories = parse_advisories(project.payload)
        return judge(dist, latest, advisories, Evidence.LATEST_RELEASE, accepted)
    why = "this version is not on PyPI" if version is not None else "per-version JSON unavailable"
    detail = f"not auditable from here (installed {installed}, latest {latest}): {why}"
    return PackageResult(
        name, installed, latest, Status.NOT_AUDITABLE, Evidence.NONE, detail=detail
    )


def run_audit(
    client: httpx.Client,
    installed: Iterable[Installed],
    accepted: Sequence[AcceptedFinding],
    *,
    workers: int = 8,
    deadline_seconds: float = 30.0,
) -> AuditReport:
    """Audit ``installed`` against the PyPI behind ``client`` (its ``base_url``)."""
    start = time.monotonic()
    pypi = _PyPI(client, start + deadline_seconds)
    dists = list(installed)
    remote = [d for d in dists if not d.local]
    first = pypi.get(f"/pypi/{remote[0].name}/json") if remote else _Answer(200)
    if first.status is None:  # nothing answered: do not wait for every other lookup too
        down = _Answer(None, error=f"PyPI unreachable: {first.error}")
        results = [_verdict(d, None if d.local else down, None, accepted) for d in dists]
        return AuditReport(
            False, "not tried", results, list(accepted), [], time.monotonic() - start
        )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rest = pool.map(lambda d: pypi.get(f"/pypi/{d.name}/json"), remote[1:])
        projects = dict(zip(remote, [first, *rest], strict=True))
        known = [(d, a.payload) for d, a in projects.items() if a.payload is not None]
        service = "no project answer to probe it with"
        versions: dict[Installed, _Answer] = {}
        if known:
            dist, payload = known[0]
            latest = payload["info"]["version"]
            probe = pypi.get(f"/pypi/{dist.name}/{latest}/json")
            service = "available"
            if probe.status != 200:
                service = f"{probe.error} for {dist.name} {latest}, a published release"
        if service == "available":
            asked = [d for d, _ in known]
            answers = pool.map(lambda d: pypi.get(f"/pypi/{d.name}/{d.version}/json"), asked)
            versions = dict(zip(asked, answers, strict=True))
    results = [_verdict(d, projects.get(d), versions.get(d), accepted) for d in dists]
    stale = [
        a
        for a in accepted
        if not any(
            canonicalize_name(r.name) == canonicalize_name(a.package)
            and any(adv.matches(a.id) for adv in r.advisories)
            for r in results
        )
    ]
    return AuditReport(True, service, results, list(accepted), stale, time.monotonic() - start)


def render(report: AuditReport, console: Console) -> None:
    """The table, the accepted findings, the totals and the verdict."""
    if not report.pypi_reachable:
        why = next((p.detail for p in report.packages if p.status is Status.LOOKUP_FAILED), "")
        console.print(f"[bold red]The audit did not run: {why}[/]", highlight=False)
        return
    table = Table(
        "package", "installed", "latest", "status", "evidence", "advisories", box=box.SIMPLE_HEAD
    )
    for p in report.packages:
        ids = ", ".join(a.id for a in p.advisories) or (
            "-" if p.evidence is not Evidence.NONE else ""
        )
        style = {Status.VULNERABLE: "bold red", Status.LOOKUP_FAILED: "red"}.get(p.status, "")
        style = style or ("yellow" if p.evidence is Evidence.NONE else "")
        table.add_row(
            p.name, p.installed, p.latest or "", p.status.value, p.evidence.value, ids, style=style
        )
    console.print(table)
    if report.accepted:
        accepted = Table(
            "accepted id", "package", "reason", "reviewer", "date", title="Accepted findings"
        )
        for a in report.accepted:
            accepted.add_row(a.id, a.package, a.reason, a.reviewer, a.date.isoformat())
        console.print(accepted)
    for a in report.stale_accepted:
        console.print(f"[yellow]accepted {a.id} ({a.package}) matched no finding this run[/]")
    totals = report.totals()
    console.print("totals: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    console.print(f"per-version JSON service: {report.version_service}")
    console.print(f"took {report.duration_seconds:.1f} s")
    not_audited = [p for p in report.packages if p.evidence is Evidence.NONE]
    if not_audited:
        names = ", ".join(f"{p.name} {p.installed}" for p in not_audited)
        console.print(
            f"[bold yellow]WARNING: {len(not_audited)} of {len(report.packages)} packages "
            f"were NOT audited (no evidence for their installed version): {names}[/]"
        )
    for p in report.packages:
        if p.status in {Status.VULNERABLE, Status.LOOKUP_FAILED}:
            ids = ", ".join(a.id for a in p.advisories) or p.detail
            console.print(f"[bold red]{p.status.value}: {p.name} {p.installed}: {ids}[/]")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the audit of this environment; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m vigil.audit", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--accepted",
        type=Path,
        default=Path("deploy/audit-accepted.toml"),
        help="accepted findings (TOML)",
    )
    parser.add_argument(
        "--report", type=Path, default=Path("reports/audit.json"), help="JSON report to write"
    )
    parser.add_argument("--index-url", default="https://pypi.org", help="PyPI base URL")
    parser.add_argument("--workers", type=int, default=8, help="concurrent requests")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds for the whole audit")
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:  # make, CI logs: do not squeeze the table into 80 columns
        console = Console(width=160)
    try:
        accepted = load_accepted(args.accepted)
    except ConfigError as exc:
        console.print(f"vigil.audit: error: {exc}", markup=False, style="red")
        return 2
    headers = {"User-Agent": "vigil-audit", "Accept": "application/json"}
    with httpx.Client(base_url=args.index_url, timeout=args.timeout, headers=headers) as client:
        report = run_audit(
            client,
            installed_distributions(),
            accepted,
            workers=args.workers,
            deadline_seconds=args.deadline,
        )
    render(report, console)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    console.print(f"report: {args.report}")
    return report.exit_status


if __name__ == "__main__":
    sys.exit(main())
