"""Versioned migrations of conveyor's PostgreSQL schema, and the check a worker makes before using it.

Each migration is one file ``migrations/NNNN_name.sql``; its number is the schema version it brings.
``conveyor db migrate APP`` applies the missing ones in order, each in its own transaction with the
schema's ``search_path``, under a transaction-level advisory lock so two runs at once apply each
migration once. ``conveyor_migrations`` records every version applied and when.

A broker or backend refuses a schema older than :data:`REQUIRED` (or a missing one) at its first use,
with the command to run: conveyor never changes a schema on its own, since a deploy usually migrates
once before starting many workers.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from conveyor.errors import ConfigurationError

_FILE = re.compile(r"(\d{4})_(\w+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its number, name and SQL text."""

    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """Every migration shipped with this conveyor, in version order."""
    found = []
    for entry in importlib.resources.files("conveyor.brokers.postgres.migrations").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


#: The schema version this conveyor needs (the newest migration it ships).
REQUIRED = migrations()[-1].version


def current_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The newest migration applied to ``schema``; 0 when conveyor's schema is not there at all."""
    row = conn.execute(
        "SELECT to_regclass(quote_ident(%s::text) || '.conveyor_migrations') IS NOT NULL", (schema,)
    ).fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute(sql.SQL("SELECT max(version) FROM {}.conveyor_migrations").format(sql.Identifier(schema)))
    version = found.fetchone()
    return int(version[0]) if version is not None and version[0] is not None else 0


def check_version(conn: psycopg.Connection[Any], schema: str) -> None:
    """Refuse a schema older than :data:`REQUIRED`, naming the command that migrates it.

    Raises:
        ConfigurationError: the schema is missing or older than this conveyor needs.
    """
    version = current_version(conn, schema)
    if version < REQUIRED:
        where = "does not exist" if version == 0 else f"is at version {version}"
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} {where}; this conveyor needs version {REQUIRED}: "
            "run `conveyor db migrate APP` (APP as for `conveyor worker`) first"
        )


def migrate(conninfo: str, schema: str) -> list[Migration]:
    """Create or bring ``schema`` up to :data:`REQUIRED`; return the migrations applied (none: up to date).

    Raises:
        psycopg.Error: the server refused a statement (nothing of that migration is kept).
    """
    applied: list[Migration] = []
    ident = sql.Identifier(schema)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for migration in migrations():
            with conn.transaction():
                # One lock per schema name: concurrent runs queue here, and the second sees the first's work.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('conveyor-migrate:' || %s))", (schema,))
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.conveyor_migrations "
                        "(version integer PRIMARY KEY, name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(ident)
                )
                if current_version(conn, schema) >= migration.version:
                    continue
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
                conn.execute(migration.text.encode())
                conn.execute(
                    sql.SQL("INSERT INTO {}.conveyor_migrations (version, name) VALUES (%s, %s)").format(ident),
                    (migration.version, migration.name),
                )
                applied.append(migration)
    return applied
