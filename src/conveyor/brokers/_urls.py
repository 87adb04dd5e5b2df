"""Broker URLs: the ``prefix=`` parameter conveyor adds to a client library's URL, and printable URLs.

Pure functions shared by the Redis and AMQP brokers (no client library imported here).
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from conveyor.errors import ConfigurationError


def split_prefix(url: str, default: str, engine: str) -> tuple[str, str, str]:
    """Split a conveyor URL into (URL for the client library, prefix, URL safe to print).

    Args:
        url: the URL, whose ``prefix`` query parameter (the last one wins) names the prefix.
        default: the prefix when there is no ``prefix`` parameter.
        engine: the engine's name, for the error message.

    Raises:
        ConfigurationError: the ``prefix`` parameter is empty.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    prefix = prefixes[-1] if prefixes else default
    if not prefix:
        raise ConfigurationError(f"empty prefix= in {engine} URL {safe_url(url)!r}")
    rest = [(name, value) for name, value in query if name != "prefix"]
    return _unsplit(parts._replace(query=urlencode(rest))), prefix, safe_url(url)


def safe_url(url: str) -> str:
    """The URL with any password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{user}:***@{host}"
    query = [(n, "***" if n == "password" else v) for n, v in parse_qsl(parts.query, keep_blank_values=True)]
    return _unsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def _unsplit(parts: SplitResult) -> str:
    """urlunsplit that keeps ``//`` when the authority is empty (``unix:///path``), as redis-py's docs write it."""
    url = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return url + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")
