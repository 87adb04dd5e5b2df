"""``conveyor db``: the schema of an engine that keeps a versioned one (PostgreSQL)."""

from __future__ import annotations

import click

from conveyor.cli._load import load_app
from conveyor.settings import redact_url


@click.group()
def db() -> None:
    """The database schema of APP's broker and result backend (PostgreSQL; other engines need nothing)."""


@db.command()
@click.argument("app", envvar="CONVEYOR_APP")
def migrate(app: str) -> None:
    """Create or upgrade APP's PostgreSQL schema to what this conveyor needs.

    Run it once per deploy, before starting workers: a worker refuses a schema older than it needs.
    Safe to run again and from several machines at once (each migration is applied once, in one
    transaction). The URL's ?schema= (default "conveyor") names the schema.
    """
    the_app = load_app(app)
    lines = the_app.migrate()
    if not lines:
        broker = redact_url(the_app.settings.broker_url)
        click.echo(f"nothing to migrate: {broker} (and its result backend) create what they need themselves")
    for line in lines:
        click.echo(line)
