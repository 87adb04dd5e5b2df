"""``conveyor dashboard``: serve the web UI (``pip install conveyor[dashboard]``)."""

from __future__ import annotations

import click

from conveyor.cli._load import load_app
from conveyor.errors import ConfigurationError


@click.command()
@click.argument("app", envvar="CONVEYOR_APP")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; another than loopback needs --token."
)
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True, help="TCP port.")
@click.option("--token", default=None, help="Require this token from every client (open the page once with ?token=T).")
def dashboard(app: str, host: str, port: int, token: str | None) -> None:
    """Serve APP's dashboard: queues (pause, resume, purge), workers, tasks, dead letters, periodic entries, /metrics.

    It reads the broker and result backend as `conveyor status` does and keeps nothing of its own, so
    it can be restarted, or run several times, at will. Every action is a POST protected against CSRF.
    """
    from conveyor.dashboard.security import check_bind

    try:
        check_bind(host, token)
        import uvicorn

        from conveyor.dashboard import create_app
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    except ImportError as exc:
        raise click.UsageError(f"the dashboard needs its extra: pip install 'conveyor[dashboard]' ({exc})") from exc
    the_app = load_app(app)
    click.echo(f"conveyor dashboard of {the_app.name} on http://{host}:{port}/")
    uvicorn.run(create_app(the_app, token), host=host, port=port, log_level="warning")
