"""The `keys` and `usage` commands: they talk to the database directly, no server needed."""

from __future__ import annotations

import argparse
import sys
import time

from app.auth.keys import KeyLimits, KeyStore, KeyStoreError
from app.core.config import Settings
from app.db.engine import create_engine, migrate
from app.metering.prices import PER, format_usd
from app.protocols.admin.types import LIMIT_COLUMNS, MAX_BUDGET_USD, MAX_PER_MINUTE

CLEARABLE = {field.replace("_", "-"): column for field, column in LIMIT_COLUMNS.items()}  # --clear max-effort
# The admin API's bounds: rpm and tpm are INTEGER columns (32-bit on PostgreSQL), budgets at most $1e9.
MAX_BUDGET_MICROS = int(MAX_BUDGET_USD) * PER


def _limits(args: argparse.Namespace) -> KeyLimits:
    return KeyLimits(
        budget_micros=args.budget,
        rpm=args.rpm,
        tpm=args.tpm,
        allowed_modes=args.modes,
        max_effort=args.max_effort,
    )


def _out_of_range(args: argparse.Namespace) -> str | None:
    """What is wrong with the limits given to `keys create`/`keys update`, before the database
    sees them (a number it cannot hold would be a traceback); None when they are all right."""
    for flag in ("rpm", "tpm"):
        value = getattr(args, flag, None)
        if value is not None and not 1 <= value <= MAX_PER_MINUTE:
            return f"--{flag} must be from 1 to {MAX_PER_MINUTE}; got {value}"
    budget = getattr(args, "budget", None)
    if budget is not None and not 0 <= budget <= MAX_BUDGET_MICROS:
        return f"--budget must be from 0 to {format_usd(MAX_BUDGET_MICROS)} USD; got {format_usd(budget)}"
    return None


def _money(micros: int | None) -> str:
    return "unlimited" if micros is None else "$" + format_usd(micros)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "keys" and (problem := _out_of_range(args)) is not None:
        print(f"thinkgate: {problem}", file=sys.stderr)
        return 2
    await migrate(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        keys = KeyStore(engine)
        if args.command == "keys":
            return await _keys(args, keys)
        from app.metering.report import print_usage

        return await print_usage(engine, key_id=args.key, group_by=args.group_by, since=args.since)
    finally:
        await engine.dispose()


async def _keys(args: argparse.Namespace, keys: KeyStore) -> int:
    if args.keys_command == "create":
        try:
            key_id, secret = await keys.create(args.name, _limits(args), is_admin=args.admin)
        except KeyStoreError as exc:
            print(f"thinkgate: no key was created. {exc}", file=sys.stderr)
            return 1
        print(f"Created key {key_id} ({args.name}). Its secret is shown only once:")
        print(secret)
        return 0
    if args.keys_command == "list":
        print(f"{'ID':<22} {'NAME':<20} {'PREFIX':<12} {'STATE':<8} {'BUDGET':>14} {'SPENT':>12} {'LIMITS'}")
        for row in await keys.list():
            state = "revoked" if row["revoked_at"] else "active"
            limits = ", ".join(
                f"{label}={row[column]}" for label, column in
                (("rpm", "rpm"), ("tpm", "tpm"), ("modes", "allowed_modes"), ("max-effort", "max_effort"))
                if row[column] is not None
            )  # fmt: skip
            print(
                f"{row['id']:<22} {row['name'][:20]:<20} {row['prefix']:<12} {state:<8} "
                f"{_money(row['budget_micros']):>14} {_money(row['spent_micros']):>12} {limits or '-'}"
            )
        return 0
    if args.keys_command == "revoke":
        if await keys.revoke(args.id):
            print(f"Revoked {args.id} at {time.strftime('%Y-%m-%d %H:%M:%S')}.")
            return 0
        print(f"No active key {args.id}.")
        return 1
    if args.keys_command == "update":
        if await keys.update(args.id, _limits(args), clear=tuple(CLEARABLE[c] for c in args.clear)):
            print(f"Updated {args.id}.")
            return 0
        print(f"No key {args.id}.")
        return 1
    raise AssertionError(args.keys_command)
