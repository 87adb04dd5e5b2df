"""The dashboard's guards: an optional access token, and CSRF protection for every action.

- Token: with ``--token T`` every request must carry it, as ``Authorization: Bearer T``, or once as
  ``?token=T`` (the dashboard then keeps it in an HttpOnly cookie). Binding to anything but the
  loopback address requires a token (see :func:`check_bind`).
- CSRF: every action is a POST whose form carries the value of the ``conveyor_csrf`` cookie
  (double submit), and whose ``Origin``, when the browser sends one, names this host. Both are
  stateless: a restarted dashboard accepts the forms it rendered before.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from conveyor.errors import ConfigurationError

CSRF_COOKIE = "conveyor_csrf"
TOKEN_COOKIE = "conveyor_token"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

Handler = Callable[[Request], Awaitable[Response]]


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token.

    Raises:
        ConfigurationError: ``host`` is not a loopback address and no token was given.
    """
    if host not in LOOPBACK and not token:
        raise ConfigurationError(f"--host {host} exposes the dashboard beyond this machine: give --token as well")


def csrf_token(request: Request) -> str:
    """The CSRF value of this browser (its cookie), or a new one that :func:`guard` sets as the cookie."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing:
        return existing
    fresh = getattr(request.state, "new_csrf", None)
    if not isinstance(fresh, str):
        fresh = request.state.new_csrf = secrets.token_urlsafe(24)
    return fresh


def guard(token: str | None) -> Callable[[Request, Handler], Awaitable[Response]]:
    """An HTTP middleware: the token check, the CSRF check on POST, and the CSRF cookie."""

    async def middleware(request: Request, call_next: Handler) -> Response:
        if token:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, token):
                response: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            if not (hmac.compare_digest(bearer, token) or hmac.compare_digest(cookie, token)):
                return PlainTextResponse("a token is required: open the dashboard with ?token=...", status_code=401)
        if request.method == "POST":
            problem = await _csrf_problem(request)
            if problem:
                return PlainTextResponse(f"refused: {problem}", status_code=403)
        response = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new and not request.cookies.get(CSRF_COOKIE):
            response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict")
        return response

    return middleware


async def _csrf_problem(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        return f"a form posted from another site ({origin})"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    form = await request.form()
    sent = form.get("csrf")
    if not cookie or not isinstance(sent, str) or not hmac.compare_digest(sent, cookie):
        return "the form's CSRF token does not match (reload the page)"
    return None
