"""One ``vigil train`` command per settings class: the options come from the class's fields.

Each field becomes ``--field-name`` with the field's description as help and its
environment variable (prefix + name) shown in ``--help``, so a new setting appears on
the command line without being written twice. Options left out fall back to the
environment, then to the field's default (the settings class decides). A value the
settings reject prints one line naming the option and exits with status 2; a
:class:`~vigil.errors.VigilError` from the run prints one line and exits with status 1.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic
import typer
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings
from rich.console import Console

from vigil.errors import VigilError

__all__ = ["fail", "settings_command"]

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

_console = Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    """Prints ``error: message`` on stderr; returns the exit to raise with ``code``."""
    _console.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def _option_type(annotation: Any) -> Any:
    """The type the command line parses: ``X | None`` as ``X``, a ``Literal`` as ``str``
    (the settings class checks the choice)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is Literal:
        return str
    return annotation


def _parameter(name: str, field: FieldInfo, env_prefix: str) -> inspect.Parameter:
    kind = _option_type(field.annotation)
    flag = name.replace("_", "-")
    declarations = (f"--{flag}/--no-{flag}",) if kind is bool else ()
    default = field.get_default(call_default_factory=False)
    option = typer.Option(
        *declarations,
        help=field.description,
        envvar=f"{env_prefix}{name.upper()}",
        show_default=False if default is None else str(default),
    )
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


def settings_command(
    app: typer.Typer,
    name: str,
    settings_class: type[SettingsT],
    run: Callable[[SettingsT], str],
    *,
    help_text: str,
) -> None:
    """Adds ``name`` to ``app``: options from ``settings_class``'s fields, then ``run``.

    Args:
        app: The typer group.
        name: The command's name.
        settings_class: A pydantic-settings class with an ``env_prefix``.
        run: Does the work with the validated settings and returns the line to print;
            imports torch itself, so ``--help`` stays fast.
        help_text: The command's help.
    """
    env_prefix = str(settings_class.model_config.get("env_prefix", ""))
    parameters = [
        _parameter(field_name, field, env_prefix)
        for field_name, field in settings_class.model_fields.items()
    ]

    def command(**given: Any) -> None:
        values = {key: value for key, value in given.items() if value is not None}
        try:
            settings = settings_class(**values)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise fail(f"--{where.replace('_', '-')}: {first['msg']}", 2) from None
        try:
            message = run(settings)
        except VigilError as exc:
            raise fail(str(exc), 1) from None
        typer.echo(message)

    command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    command.__doc__ = help_text
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    app.command(name)(command)
