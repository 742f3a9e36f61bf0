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
from typing import Any

from pydantic import ValidationError

from app.core.config import Settings

# Flag name -> Settings field, for `serve`. Types come from the Settings model itself.
SERVE_FLAGS: dict[str, dict[str, Any]] = {
    "host": {"help": "address to bind (default 127.0.0.1)"},
    "port": {"type": int, "help": "port to bind (default 8000)"},
    "upstream": {"dest": "upstreams", "action": "append", "metavar": "URL",
                 "help": "OpenAI-compatible engine base URL; repeat for replicas. None: the embedded engine"},
    "database-url": {"help": "SQLAlchemy URL (default: SQLite file under ./data/)"},
    "models-dir": {"type": Path, "help": "folder with model profiles and the bundled checkpoint"},
    "model": {"help": "profile of the embedded engine's model (default thinkgate-arith)"},
    "no-auth": {"action": "store_const", "const": True, "help": "no API key needed (loopback only)"},
    "no-api-docs": {"dest": "api_docs", "action": "store_const", "const": False,
                    "help": "do not serve /docs, /redoc and /openapi.json"},
    "admin-key-file": {"type": Path, "metavar": "PATH",
                       "help": "file holding the secret of the admin API (or set THINKGATE_ADMIN_KEY)"},
    "admin-key": {"metavar": "SECRET",
                  "help": "deprecated, visible in ps: use THINKGATE_ADMIN_KEY or --admin-key-file"},
    "instance-id": {"help": "name of this gateway, unique per database (default hostname:port)"},
    "max-request-bytes": {"type": int},
    "max-image-bytes": {"type": int},
    "max-image-pixels": {"type": int},
    "max-images-per-request": {"type": int},
    "image-url-allowlist": {"action": "append", "metavar": "HOST",
                            "help": "host whose image URLs may be fetched"},
    "upstream-timeout-s": {"type": float},
    "upstream-header-timeout-s": {"type": float, "help": "seconds the engine may take to answer (head)"},
    "health-interval-s": {"type": float},
    "no-affinity": {"dest": "affinity", "action": "store_const", "const": False,
                    "help": "do not keep a conversation on one replica"},
    "checkpoint-interval-s": {"type": float, "help": "how often running requests save their token counts"},
    "no-metering": {"dest": "metering", "action": "store_const", "const": False,
                    "help": "no ledger, budgets or rate limits (to measure their cost)"},
    "prices-file": {"type": Path, "help": "TOML of price overrides per profile and mode"},
    "engine-port": {"type": int, "help": "port of the embedded engine (default: a free one)"},
    "engine-startup-timeout-s": {"type": float},
    "engine-log": {"type": Path},
    "engine-kv-cache-gib": {"type": int},
}  # fmt: skip


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
    parser.add_argument("--max-effort", choices=["none", "minimal", "low", "medium", "high"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thinkgate", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="SQLAlchemy URL (default: THINKGATE_DATABASE_URL)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (and the embedded engine when no upstream)")
    for flag, options in SERVE_FLAGS.items():
        serve.add_argument(f"--{flag}", default=argparse.SUPPRESS, **options)

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
    usage.add_argument("--group-by", default="day", help="day, model, mode or key (comma-separated)")
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
        timeout_graceful_shutdown=15,
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("alembic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "admin_key", None) is not None:
        print(
            "thinkgate: warning: --admin-key is deprecated: every local user sees it in `ps`. "
            "Set THINKGATE_ADMIN_KEY or use --admin-key-file PATH instead.",
            file=sys.stderr,
        )
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        parser.exit(2, f"thinkgate: invalid settings:\n{exc}\n")
    if args.command == "serve":
        _serve(settings)
        return
    from app.cli import keys as admin_cli

    sys.exit(asyncio.run(admin_cli.run(args, settings)))
