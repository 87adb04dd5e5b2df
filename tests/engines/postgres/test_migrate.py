"""``conveyor db migrate``: versioned migrations, and a worker that refuses a schema it cannot use."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from conveyor.brokers.postgres import migrate as migrations
from conveyor.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]
APP = "tests.apps.e2e_app:app"


def conveyor(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_BROKER_URL=url, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "conveyor", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_migrate_creates_the_schema_once_and_a_worker_refuses_it_before(postgres_db: str) -> None:
    # Given a schema nobody migrated
    schema = f"m_{uuid.uuid4().hex[:10]}"
    url = f"{postgres_db}?schema={schema}"
    # When a worker starts on it: it stops at once with one line naming the command to run
    worker = conveyor(url, "worker", APP, "-c", "1")
    assert worker.returncode == 2, worker.stderr
    assert worker.stderr.strip().splitlines() == [
        f"Error: PostgreSQL schema {schema!r} does not exist; this conveyor needs version "
        f"{migrations.REQUIRED}: run `conveyor db migrate APP` (APP as for `conveyor worker`) first"
    ]
    # When it is migrated, twice: the first run applies every migration, the second none
    first = conveyor(url, "db", "migrate", APP)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied 0001_initial") == 1
    again = conveyor(url, "db", "migrate", APP)
    assert f"up to date (version {migrations.REQUIRED})" in again.stdout
    # Then the version table records each version once
    with psycopg.connect(postgres_db) as conn:
        rows = conn.execute(f"SELECT version, name FROM {schema}.conveyor_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in migrations.migrations()]


def test_an_older_schema_is_refused_with_the_command(postgres_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a schema at the current version, and a conveyor that needs the next one
    schema = f"m_{uuid.uuid4().hex[:10]}"
    migrations.migrate(postgres_db, schema)
    monkeypatch.setattr(migrations, "REQUIRED", migrations.REQUIRED + 1)
    # When it checks: refused, naming both versions and the command
    with psycopg.connect(postgres_db) as conn, pytest.raises(ConfigurationError) as caught:
        migrations.check_version(conn, schema)
    assert f"is at version {migrations.REQUIRED - 1}; this conveyor needs version {migrations.REQUIRED}" in str(
        caught.value
    )
    assert "conveyor db migrate APP" in str(caught.value)


def test_concurrent_migrations_apply_each_version_once(postgres_db: str) -> None:
    # Given two deploys migrating the same fresh schema at once
    schema = f"m_{uuid.uuid4().hex[:10]}"
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from conveyor.brokers.postgres.migrate import migrate; migrate({postgres_db!r}, {schema!r})",
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # Then both succeed and the schema holds each version once
    for run in runs:
        _, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
    with psycopg.connect(postgres_db) as conn:
        count = conn.execute(f"SELECT count(*) FROM {schema}.conveyor_migrations").fetchone()
    assert count == (len(migrations.migrations()),)


def test_db_migrate_on_an_engine_without_a_schema_says_so(tmp_path: Path) -> None:
    done = conveyor(f"sqlite:///{tmp_path / 'c.db'}", "db", "migrate", APP)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("nothing to migrate: sqlite:///")


def test_a_version_1_schema_with_results_upgrades_to_the_workflow_primitives(
    postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.backends.postgres import PostgresResultBackend
    from conveyor.states import State

    # Given a schema at version 1 holding a result written by that version's cv_set_results
    schema = f"u_{uuid.uuid4().hex[:10]}"
    every = migrations.migrations()
    monkeypatch.setattr(migrations, "migrations", lambda: every[:1])
    assert [m.version for m in migrations.migrate(postgres_db, schema)] == [1]
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute(
            f"SELECT {schema}.cv_set_results(%s, %s, %s::bytea[], %s, %s)",
            (["old"], ["REVOKED"], [b"revoked"], 60.0, ["REVOKED"]),
        )
    # When it is migrated by this conveyor
    monkeypatch.undo()
    assert [m.version for m in migrations.migrate(postgres_db, schema)] == list(range(2, migrations.REQUIRED + 1))
    backend = PostgresResultBackend(f"{postgres_db}?schema={schema}")
    try:
        # Then the old result is there, under the revocation rule, and the new primitives work
        assert backend.get("old") == b"revoked"
        assert backend.try_set("old", State.SUCCESS, b"late", ttl=60) is False
        assert backend.gather("chord", 0, b"x", ttl=60) == 1
        assert backend.take_token("bucket", rate=1.0, burst=1.0) == 0.0
    finally:
        backend.close()
