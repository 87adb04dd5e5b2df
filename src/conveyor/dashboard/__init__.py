"""``conveyor dashboard``: a web UI over the same ops layer as the CLI (Starlette; ``pip install conveyor[dashboard]``).

Pages (HTML shells filled by ``static/dashboard.js`` from ``/api/<page>`` every second): overview,
queues (pause, resume, purge), workers, tasks (search; one task's record), dead letters (requeue,
purge), periodic entries; and ``/metrics`` for Prometheus (the task series from the engine's
counters, the broker's gauges: metrics.py). Every action is a POST guarded against CSRF
(security.py). Assets ship in the package: no CDN, works offline.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor import pausing
from conveyor.app import App
from conveyor.dashboard import views
from conveyor.dashboard.security import csrf_token, guard
from conveyor.metrics import dashboard_registry

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
PAGES = {
    "overview": "Overview",
    "queues": "Queues",
    "workers": "Workers",
    "tasks": "Tasks",
    "dead": "Dead letters",
    "periodic": "Periodic",
}


def create_app(app: App, token: str | None = None) -> Starlette:
    """The dashboard of ``app`` as an ASGI application (``token``: required from every client when set)."""
    readers: dict[str, Callable[[Request], dict[str, Any]]] = {
        "overview": lambda r: views.overview(app),
        "queues": lambda r: views.queues(app),
        "workers": lambda r: views.workers(app),
        "tasks": lambda r: views.tasks(
            app, r.query_params.get("id", ""), r.query_params.get("name", ""), r.query_params.get("state", "")
        ),
        "dead": lambda r: views.dead_letters(app),
        "periodic": lambda r: views.periodic(app),
    }

    async def page(request: Request) -> Response:
        name = request.path_params.get("page", "overview")
        if name not in PAGES:
            return HTMLResponse("no such page", status_code=404)
        return HTMLResponse(_shell(app, name, csrf_token(request)))

    async def api(request: Request) -> Response:
        name = request.path_params["page"]
        if name not in readers:
            return JSONResponse({"error": f"no such view {name!r}"}, status_code=404)
        data = await run_in_threadpool(readers[name], request)
        return JSONResponse(data)

    queue_actions: dict[str, Callable[[str], object]] = {
        "pause": lambda q: pausing.pause(app.backend, q),
        "resume": lambda q: pausing.resume(app.backend, q),
        "purge": app.broker.purge,
    }
    dead_actions: dict[str, Callable[[list[str] | None], int]] = {
        "requeue": app.broker.requeue_dead,
        "purge": app.broker.purge_dead,
    }

    async def queue_action(request: Request) -> Response:
        action = queue_actions.get(request.path_params["action"])
        if action is None:
            return HTMLResponse("no such action", status_code=404)
        await run_in_threadpool(action, request.path_params["queue"])
        return RedirectResponse("/queues", status_code=303)

    async def dead_action(request: Request) -> Response:
        action = dead_actions.get(request.path_params["action"])
        if action is None:
            return HTMLResponse("no such action", status_code=404)
        form = await request.form()
        await run_in_threadpool(action, [str(i) for i in form.getlist("id")] or None)  # none ticked: all of them
        return RedirectResponse("/dead", status_code=303)

    registry = dashboard_registry(app)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", page),
        Route("/metrics", metrics),
        Route("/api/{page}", api),
        Route("/queues/{queue}/{action}", queue_action, methods=["POST"]),
        Route("/dead/{action}", dead_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/{page}", page),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard(token))])


def _shell(app: App, name: str, csrf: str) -> str:
    """The HTML of a page: navigation, an empty main area the script fills, the CSRF value for its forms."""
    nav = "".join(
        f'<a href="/{key if key != "overview" else ""}" class="{"on" if key == name else ""}">{label}</a>'
        for key, label in PAGES.items()
    )
    config = html.escape(json.dumps({"page": name, "csrf": csrf}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>conveyor · {html.escape(app.name)} · {PAGES[name]}</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body data-config="{config}">
<header><strong>conveyor</strong> <span class="app">{html.escape(app.name)}</span><nav>{nav}</nav></header>
<main id="main"><p class="muted">loading…</p></main>
<script src="/static/dashboard.js"></script>
</body></html>"""
