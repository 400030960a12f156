"""The ``vigil`` command line.

Errors are reported as one line on stderr (``vigil: error: ...``) with a non-zero exit:
2 for a bad argument or setting, 1 for anything else that failed.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from models.cli import export_app, run_federate_command, run_validate_command, train_app
from models.common.settings_cli import settings_command
from models.dose_cli import imaging_app
from models.federated.settings import FederateSettings
from models.validity.settings import ValidateSettings
from streams.adapters.security import kafka_python_options
from streams.adapters.topics import create_topics, missing_topics
from streams.console.settings import ConsoleSettings
from streams.gateway.hl7_replay import read_hl7
from streams.gateway.server import run_gateway
from streams.gateway.settings import GatewaySettings
from streams.replay import (
    merge,
    produce,
    read_fhir,
    read_files,
    read_jsonl,
    read_length_of_stay,
    read_physionet2012,
    read_physionet2019,
    record,
    resolve_topics,
)
from streams.replay.event import Reader
from streams.replay.imaging_fixture import imaging_fixture_events
from streams.settings import WorkerSettings
from streams.worker import run_worker
from vigil.errors import ConfigError, TopicError, VigilError
from vigil.stack.manager import Stack, parse_only
from vigil.stack.settings import StackSettings

__all__ = ["app", "main", "run"]

app = typer.Typer(
    name="vigil",
    help="Vigil: event-driven ICU patient monitoring (Kafka, Faust, Triton).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(
    help=(
        "Run the real Kafka, Redis, Triton and Prometheus as local processes on loopback. "
        "Ports and directories come from VIGIL_STACK_* environment variables "
        "(e.g. VIGIL_STACK_KAFKA_PORT, VIGIL_STACK_STATE_DIR); see docs/stack.md."
    ),
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
topics_app = typer.Typer(help="Create and check Vigil's Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(train_app, name="train")
app.add_typer(export_app, name="export")
settings_command(
    app,
    "federate",
    FederateSettings,
    run_federate_command,
    help_text="Federated training of the step model over four SIMULATED sites (set A's ICU "
    "types): Flower with SecAgg+, TLS on loopback; writes OUT/federation.json (docs/federated.md).",
)
settings_command(
    app,
    "validate",
    ValidateSettings,
    run_validate_command,
    help_text="Analytical and clinical validity: OUT/validity.json and OUT/report.html "
    "(docs/validity.md); reads vigil federate's output.",
)
app.add_typer(imaging_app, name="imaging")

OnlyOption = Annotated[
    str | None,
    typer.Option("--only", help="Comma-separated subset: kafka,redis,triton,prometheus."),
]

_out = Console()
_err = Console(stderr=True)


def _stack() -> Stack:
    try:
        return Stack(StackSettings())
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    return f"invalid setting {where}: {first['msg']} ({exc.error_count()} error(s))"


@stack_app.command("up")
def stack_up(only: OnlyOption = None) -> None:
    """Start the services (idempotent) and wait until each is healthy."""
    names = parse_only(only)
    stack = _stack()
    with _err.status(f"starting {', '.join(names)} ..."):
        statuses = stack.up(names)
    for status in statuses:
        _err.print(f"[green]healthy[/green] {status.name:<10} {status.address}")


@stack_app.command("down")
def stack_down(only: OnlyOption = None) -> None:
    """Stop the services that `vigil stack up` started."""
    stopped = _stack().down(parse_only(only))
    _err.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status(
    only: OnlyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for other tools.")] = False,
) -> None:
    """Show each service's address, pid and health. Exit 1 if any is not healthy."""
    statuses = _stack().status(parse_only(only))
    if as_json:
        sys.stdout.write(json.dumps([s.as_dict() for s in statuses], indent=2) + "\n")
    else:
        table = Table("service", "address", "pid", "health")
        for s in statuses:
            health = "healthy" if s.healthy else ("running" if s.running else "stopped")
            table.add_row(s.name, s.address, str(s.pid or "-"), health)
        _out.print(table)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


def _worker_settings(**overrides: object) -> WorkerSettings:
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return WorkerSettings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc


KafkaOption = Annotated[
    str | None,
    typer.Option("--kafka-bootstrap", envvar="VIGIL_KAFKA_BOOTSTRAP", help="Kafka bootstrap."),
]
PrefixOption = Annotated[
    str | None,
    typer.Option("--topic-prefix", envvar="VIGIL_TOPIC_PREFIX", help="Topic name prefix."),
]
PartitionsOption = Annotated[
    int | None,
    typer.Option("--partitions", envvar="VIGIL_TOPIC_PARTITIONS", help="Partitions per topic (8)."),
]


@topics_app.command("create")
def topics_create(
    kafka_bootstrap: KafkaOption = None,
    topic_prefix: PrefixOption = None,
    partitions: PartitionsOption = None,
) -> None:
    """Create the missing input, output and dead-letter topics."""
    settings = _worker_settings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, topic_partitions=partitions
    )
    created = create_topics(settings)
    _err.print(f"created: {', '.join(created) if created else 'all topics already exist'}")


@topics_app.command("check")
def topics_check(kafka_bootstrap: KafkaOption = None, topic_prefix: PrefixOption = None) -> None:
    """Exit 1 and list what is missing unless every topic exists."""
    missing = missing_topics(
        _worker_settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix)
    )
    if missing:
        raise TopicError(f"missing topics: {', '.join(missing)} (run `vigil topics create`)")
    _err.print("all topics exist")


@app.command("worker")
def worker(
    kafka_bootstrap: KafkaOption = None,
    topic_prefix: PrefixOption = None,
    triton_url: Annotated[
        str | None,
        typer.Option("--triton-url", envvar="VIGIL_TRITON_URL", help="Triton gRPC host:port."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", envvar="VIGIL_REDIS_URL", help="Redis URL.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", envvar="VIGIL_METRICS_PORT", help="/metrics port."),
    ] = None,
    app_id: Annotated[
        str | None,
        typer.Option("--app-id", envvar="VIGIL_APP_ID", help="Consumer group / app id."),
    ] = None,
) -> None:
    """Run the streaming worker (Faust) until stopped. Other settings: VIGIL_* variables."""
    settings = _worker_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=topic_prefix,
        triton_url=triton_url,
        redis_url=redis_url,
        metrics_port=metrics_port,
        app_id=app_id,
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_worker(settings)


@app.command("gateway")
def gateway(
    mllp_port: Annotated[
        int | None,
        typer.Option("--mllp-port", envvar="VIGIL_GATEWAY_MLLP_PORT", help="MLLP port (2575)."),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port", envvar="VIGIL_GATEWAY_HTTP_PORT", help="HTTP port: /health (8090)."
        ),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            "--kafka-bootstrap", envvar="VIGIL_GATEWAY_KAFKA_BOOTSTRAP", help="Kafka bootstrap."
        ),
    ] = None,
    topic_prefix: Annotated[
        str | None,
        typer.Option(
            "--topic-prefix", envvar="VIGIL_GATEWAY_TOPIC_PREFIX", help="Topic name prefix."
        ),
    ] = None,
) -> None:
    """Run the hospital-interface gateway (HL7 v2 over MLLP into the input topics) until
    stopped. Other settings: VIGIL_GATEWAY_* variables (docs/gateway.md)."""
    values = {
        "mllp_port": mllp_port,
        "http_port": http_port,
        "kafka_bootstrap": kafka_bootstrap,
        "topic_prefix": topic_prefix,
    }
    try:
        settings = GatewaySettings(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run_gateway(settings)
    except OSError as exc:
        raise ConfigError(f"gateway cannot listen: {exc.strerror or exc}") from exc


console_app = typer.Typer(
    help="The clinicians' ward console (settings: VIGIL_CONSOLE_*, docs/console.md).",
    invoke_without_command=True,
)
app.add_typer(console_app, name="console")


def _console_settings(**values: object) -> ConsoleSettings:
    try:
        return ConsoleSettings(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from exc


@console_app.callback()
def console(
    ctx: typer.Context,
    host: Annotated[
        str | None,
        typer.Option("--host", envvar="VIGIL_CONSOLE_HOST", help="Listen address (127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", envvar="VIGIL_CONSOLE_PORT", help="Port (8088)."),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            "--kafka-bootstrap", envvar="VIGIL_CONSOLE_KAFKA_BOOTSTRAP", help="Kafka bootstrap."
        ),
    ] = None,
    topic_prefix: Annotated[
        str | None,
        typer.Option(
            "--topic-prefix", envvar="VIGIL_CONSOLE_TOPIC_PREFIX", help="Topic name prefix."
        ),
    ] = None,
    users_file: Annotated[
        Path | None,
        typer.Option(
            "--users-file",
            envvar="VIGIL_CONSOLE_USERS_FILE",
            help="Local users (.vigil/console/users.json).",
        ),
    ] = None,
) -> None:
    """Run the ward console (board, patient pages, acknowledge/snooze/escalate) until
    stopped; `vigil console add-user NAME --role ROLE` adds a local user."""
    values = {
        "host": host,
        "port": port,
        "kafka_bootstrap": kafka_bootstrap,
        "topic_prefix": topic_prefix,
        "users_file": users_file,
    }
    ctx.obj = values
    if ctx.invoked_subcommand is not None:
        return
    settings = _console_settings(**values)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from streams.console.server import run_console

    try:
        run_console(settings)
    except OSError as exc:
        raise ConfigError(f"console cannot listen: {exc.strerror or exc}") from exc


@console_app.command("add-user")
def console_add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (recorded on every action).")],
    role: Annotated[
        str, typer.Option("--role", help="viewer, clinician (may act on alerts) or admin.")
    ],
) -> None:
    """Add or replace a local console user; the password is read from standard input."""
    from streams.console.users import UserStore

    settings = _console_settings(**(ctx.obj or {}))
    password = sys.stdin.readline().rstrip("\r\n")
    existed = UserStore(settings.users_file).add(name, role, password)
    verb = "replaced" if existed else "added"
    _err.print(f"{verb} {escape(name)} ({role}) in {settings.users_file}")


_FORMATS: dict[str, tuple[str, Reader]] = {
    "physionet2012": ("*.txt", read_physionet2012),
    "physionet2019": ("*.psv", read_physionet2019),
    "jsonl": ("*.jsonl", read_jsonl),
    "fhir": ("*.json", read_fhir),
    "hl7": ("*.hl7", read_hl7),
}


@app.command("replay")
def replay(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Input files, or folders of *.txt, *.psv, *.jsonl, *.json or *.hl7 (by "
            "--format). "
            "An unreadable file is reported and skipped, and the exit status is then 1."
        ),
    ],
    data_format: Annotated[
        str,
        typer.Option(
            "--format", help="Input format: physionet2012, physionet2019, jsonl, fhir, hl7."
        ),
    ] = "physionet2012",
    outcomes: Annotated[
        Path | None,
        typer.Option(
            "--outcomes", help="physionet2012: Outcomes-a.txt, adds discharge events at the LOS."
        ),
    ] = None,
    speed: Annotated[str, typer.Option("--speed", help="N times real time, or 'max'.")] = "max",
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after N events.")
    ] = None,
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Replay N of the files, drawn at random."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed of --sample (default 0).")
    ] = None,
    imaging_fixture: Annotated[
        Path | None,
        typer.Option(
            "--imaging-fixture",
            help="TEST FIXTURE: write the bundled sample images into this folder and give "
            "every stay one study 12 h after admission (the worker's "
            "VIGIL_IMAGING_FILE_ROOT must contain the folder). Not clinical data.",
        ),
    ] = None,
    kafka_bootstrap: KafkaOption = None,
    topic_prefix: PrefixOption = None,
) -> None:
    """Replay files into Vigil's topics, merged in event-time order (docs/replay.md)."""
    if data_format not in _FORMATS:
        raise ConfigError(f"unsupported --format {data_format!r}; supported: {', '.join(_FORMATS)}")
    if outcomes is not None and data_format != "physionet2012":
        raise ConfigError("--outcomes applies to --format physionet2012 only")
    if seed is not None and sample is None:
        raise ConfigError("--seed applies to --sample only")
    rate = _speed(speed)
    settings = _worker_settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix)
    pattern, reader = _FORMATS[data_format]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob(pattern)))
        elif path.exists():
            files.append(path)
        else:
            raise ConfigError(f"no such file or folder: {path}")
    if sample is not None and sample < len(files):
        draw = random.Random(0 if seed is None else seed)  # noqa: S311 (sampling, not secrets)
        files = sorted(draw.sample(files, sample))
    if outcomes is not None:
        reader = functools.partial(read_physionet2012, length_of_stay=read_length_of_stay(outcomes))
    failures: list[str] = []

    def on_error(path: Path, reason: str) -> None:
        failures.append(reason)
        _err.print(f"[red]skipped[/red] {escape(reason)}")

    per_file = read_files(files, reader, on_error)
    if imaging_fixture is not None:
        stays = [
            (events[0].patient_id, min(e.event_time for e in events))
            for events in per_file
            if events
        ]
        per_file.append(sorted(imaging_fixture_events(stays, imaging_fixture)))
    total = sum(len(events) for events in per_file)
    with Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("event time {task.fields[at]} UTC"),
        TimeElapsedColumn(),
        console=_err,
    ) as bar:
        task = bar.add_task("replay", total=total if limit is None else min(total, limit), at="-")

        def progress(count: int, at: datetime) -> None:
            bar.update(task, completed=count, at=at.strftime("%Y-%m-%d %H:%M"))

        sent = produce(
            merge(per_file),
            bootstrap=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            kafka_options=kafka_python_options(settings),
            speed=rate,
            limit=limit,
            progress=progress,
        )
    _err.print(f"produced {sent} events from {len(per_file)} of {len(files)} files")
    if failures:
        raise typer.Exit(1)


class _RateColumn(ProgressColumn):
    """Events per second, from rich's moving average of the task's progress."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("- events/s" if speed is None else f"{speed:,.0f} events/s")


@app.command("record")
def record_topics(
    topics: Annotated[
        list[str],
        typer.Argument(
            help="Topics: a kind (vitals, scores ...) gets --topic-prefix; any other name "
            "(vigil.vitals) is used as it is."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output file (JSON Lines), replaced.")],
    until_idle: Annotated[
        float | None,
        typer.Option("--until-idle", help="Stop after SECONDS without a record (else Ctrl-C)."),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the earliest offsets, not the end.")
    ] = False,
    kafka_bootstrap: KafkaOption = None,
    topic_prefix: PrefixOption = None,
) -> None:
    """Record topics to JSON Lines for `vigil replay --format jsonl` (see docs/replay.md)."""
    if until_idle is not None and not until_idle > 0:
        raise ConfigError(f"--until-idle must be a positive number of seconds, got {until_idle}")
    if not out.parent.is_dir():
        raise ConfigError(f"no such folder: {out.parent}")
    settings = _worker_settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix)
    names = resolve_topics(topics, settings.topic_prefix)
    with _err.status(f"recording {', '.join(names)} ...") as status:

        def progress(count: int) -> None:
            status.update(f"recording {', '.join(names)}: {count} records")

        written = record(
            names,
            out,
            bootstrap=settings.kafka_bootstrap,
            kafka_options=kafka_python_options(settings),
            from_beginning=from_beginning,
            until_idle=None if until_idle is None else timedelta(seconds=until_idle),
            progress=progress,
        )
    _err.print(f"recorded {written} records to {out}")


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--speed must be a positive number or 'max', got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--speed must be a positive number or 'max', got {text!r}")
    return value


@app.command("demo")
def demo(
    limit_stays: Annotated[
        int | None, typer.Option("--stays", min=1, help="Replay only the first N demo stays.")
    ] = None,
    kafka_bootstrap: KafkaOption = None,
) -> None:
    """Replay the demo stays through the whole pipeline, show it live, write the evaluation
    report."""
    from streams.demo import run_demo

    summary = run_demo(_worker_settings(kafka_bootstrap=kafka_bootstrap), limit_stays=limit_stays)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    _err.print(f"summary written to {summary['report']}/summary.json")
    _err.print(f"evaluation report: {summary['evaluation_report']} (open it in a browser)")


@app.command("evaluate")
def evaluate(
    scores: Annotated[
        Path | None,
        typer.Option("--scores", help="Recorded scores: JSONL records or `vigil record` lines."),
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Or read scores from this topic to its end.")
    ] = None,
    alerts: Annotated[
        Path | None, typer.Option("--alerts", help="Recorded alerts (JSONL), optional.")
    ] = None,
    alerts_topic: Annotated[
        str | None, typer.Option("--alerts-topic", help="Or read alerts from this topic.")
    ] = None,
    outcomes: Annotated[
        list[Path] | None,
        typer.Option(
            "--outcomes", help="Outcomes-a.txt (2012), or .psv files/folders (2019, repeatable)."
        ),
    ] = None,
    data_format: Annotated[
        str, typer.Option("--format", help="physionet2012 or physionet2019.")
    ] = "physionet2012",
    report: Annotated[
        Path | None, typer.Option("--report", help="Folder for report.html, metrics.json, PNGs.")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples per interval.")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    max_burden: Annotated[
        list[float] | None,
        typer.Option("--max-burden", help="Alerts per patient-hour limit (repeatable; 0.01)."),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Risk threshold for the 2019 utility.")
    ] = 0.5,
    admitted_at: Annotated[
        str | None,
        typer.Option("--admitted-at", help="Admission time of every stay (default: first score)."),
    ] = None,
    kafka_bootstrap: KafkaOption = None,
) -> None:
    """Judge recorded scores and alerts against outcomes; write an HTML report."""
    from streams.evaluation.run import EvaluateRequest, parse_admitted_at, run_evaluation

    settings = _worker_settings(kafka_bootstrap=kafka_bootstrap)
    request = EvaluateRequest(
        scores=scores,
        topic=topic,
        alerts=alerts,
        alerts_topic=alerts_topic,
        outcomes=outcomes or [],
        data_format=data_format,
        report=report,
        kafka_bootstrap=settings.kafka_bootstrap,
        kafka_options=kafka_python_options(settings),
        n_resamples=bootstrap,
        seed=seed,
        max_burdens=max_burden or [0.01],
        risk_threshold=threshold,
        admitted_at=parse_admitted_at(admitted_at),
    )
    request.check()
    with _err.status("evaluating ..."):
        summary = run_evaluation(request)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    for name, count in summary["bad_lines"].items():
        if count:
            _err.print(f"[yellow]skipped[/yellow] {count} bad {name} lines (see metrics.json)")
    _err.print(f"report written to {summary['report']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vigil`` console script; returns the exit status."""
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("vigil: aborted\n")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown command, bad option value
        message = getattr(exc, "format_message", exc.__str__)()
        sys.stderr.write(f"vigil: error: {message}\n")
        return 2
    except ConfigError as exc:
        sys.stderr.write(f"vigil: error: {exc}\n")
        return 2
    except VigilError as exc:
        sys.stderr.write(f"vigil: error: {exc}\n")
        return 1
    # With standalone_mode=False, a `typer.Exit` raised by a command comes back as its code.
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    raise SystemExit(main())
