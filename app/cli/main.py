"""`thinkgate`: serve the gateway, manage API keys, read usage.

Every setting is a flag of `thinkgate serve` and a `THINKGATE_*` environment variable; a flag given
on the command line wins over the environment. Secrets are the exception: the admin key comes from
`THINKGATE_ADMIN_KEY` or a file (`--admin-key-file`), since `ps` shows every process's arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from app.core.config import Flag, Settings


def _money(text: str) -> int:
    """USD as typed by a person → integer micro-USD (no float on the way)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError("a budget cannot be negative")
    return int((value * 1_000_000).to_integral_value())


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    if not modes or any(m not in ("long", "short") for m in modes):
        raise argparse.ArgumentTypeError("modes are a comma-separated subset of long,short")
    return modes


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=_money, metavar="USD", help="spending limit in USD")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute (prompt + completion)")
    parser.add_argument("--modes", type=_modes, metavar="long,short", help="reasoning modes the key may use")
    parser.add_argument("--max-effort", choices=["none", "minimal", "low", "medium", "high", "xhigh", "max"])


def _flag(field: FieldInfo) -> Flag:
    return next((m for m in field.metadata if isinstance(m, Flag)), Flag())


def _option(name: str, field: FieldInfo) -> str:
    """`--port`; `--no-api-docs` for a switch that is on by default; or the field's `Flag` name."""
    flag = _flag(field).name
    if flag is not None:
        return flag
    dashed = name.replace("_", "-")
    return f"--no-{dashed}" if field.annotation is bool and field.default is True else f"--{dashed}"


def _help(field: FieldInfo) -> str:
    text = field.description or ""
    deprecated = _flag(field).deprecated
    if deprecated is not None:
        text = f"Deprecated: {deprecated}"
    elif field.annotation is bool and field.default is True:
        text = f"{text} (On by default: this switches it off.)"
    return text.replace("%", "%%")  # argparse formats help texts with %


def _add_setting_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of one Settings field: its name, type and help come from the field. Not given, it
    leaves the field to the environment and the default (argparse.SUPPRESS)."""
    field = Settings.model_fields[name]
    options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field)}
    kind = field.annotation
    if get_origin(kind) in (Union, UnionType):  # `Path | None`: a flag gives the value
        kind = next(arg for arg in get_args(kind) if arg is not NoneType)
    if kind is bool:
        options.update(action="store_const", const=not field.default)
    else:
        options["metavar"] = _flag(field).metavar
        if get_origin(kind) is list:
            options["action"] = "append"
        elif kind in (int, float, Path):
            options["type"] = kind
    parser.add_argument(_option(name, field), **options)


def _warn_deprecated(args: argparse.Namespace) -> None:
    for name, field in Settings.model_fields.items():
        deprecated = _flag(field).deprecated
        if deprecated is not None and getattr(args, name, None) is not None:
            print(f"thinkgate: warning: {_option(name, field)} is deprecated: {deprecated}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinkgate", description=__doc__.splitlines()[0] if __doc__ else None
    )
    _add_setting_flag(parser, "database_url")  # for every command: keys and usage read the database
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (and the embedded engine when no upstream)")
    for name in Settings.model_fields:
        _add_setting_flag(serve, name)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; its secret is printed on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="the key may use the admin API")
    _add_limit_flags(create)
    keys.add_parser("list", help="list keys (secrets are never shown)")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")
    update = keys.add_parser("update", help="change a key's limits")
    update.add_argument("id")
    _add_limit_flags(update)
    update.add_argument(
        "--clear",
        action="append",
        default=[],
        metavar="LIMIT",
        choices=["budget", "rpm", "tpm", "modes", "max-effort"],
        help="remove a limit",
    )

    usage = commands.add_parser("usage", help="usage and cost as a table")
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--group-by", default="day", help="day, model, api, mode or key (comma-separated)")
    usage.add_argument("--since", default="7d", help="how far back: 24h, 7d, 30d, or a date YYYY-MM-DD")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    return Settings(**overrides)


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.api.app import create_app

    app = create_app(settings)
    where = "embedded engine" if settings.embedded_engine else ", ".join(settings.upstreams)
    logging.getLogger("thinkgate").info(
        "Thinkgate on http://%s:%d (upstream: %s)", settings.host, settings.port, where
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    _warn_deprecated(args)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        parser.exit(2, f"thinkgate: invalid settings:\n{exc}\n")
    if args.command == "serve":
        _serve(settings)
        return
    from app.cli import keys as admin_cli

    sys.exit(asyncio.run(admin_cli.run(args, settings)))
