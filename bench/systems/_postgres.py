"""A PostgreSQL database per benchmark run, on the server ``BENCH_POSTGRES_URL`` names (created, then dropped).

Used by conveyor's ``postgres`` variant and by Procrastinate, so both run on the same server. Needs
psycopg 3, which both venvs have.
"""

from __future__ import annotations

import os
import re

import psycopg

#: Environment variable naming the PostgreSQL server (no database) the runs create their databases on.
POSTGRES_URL_ENV = "BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"


class Database:
    """A fresh database named after the run's label; :meth:`drop` removes it (and ends its sessions)."""

    def __init__(self, label: str) -> None:
        self.server = os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL).rstrip("/")
        self.name = "bench_" + re.sub(r"[^a-z0-9_]", "_", label.lower())
        self.drop()
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self) -> str:
        return f"{self.server}/{self.name}"

    def transactions(self) -> int:
        """Transactions committed or rolled back in this database so far (pg_stat_database; ~1 s behind)."""
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as admin:
            row = admin.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (self.name,)
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def drop(self) -> None:
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
