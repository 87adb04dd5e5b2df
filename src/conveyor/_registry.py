"""Classes by URL scheme, imported only when a URL needs them: the loader both registries share.

``brokers/__init__.py`` and ``backends/__init__.py`` each keep a table ``scheme -> (module, class,
extra)`` and call :func:`load_class`, so an engine's client library (redis-py, pika) is imported
only when its URL is used, and a missing one names the extra that installs it.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError

#: scheme -> (module, class, extra that provides its client library or None)
Registry = dict[str, tuple[str, str, str | None]]


def check_scheme(registry: Registry, url: str, what: str) -> str:
    """The scheme of ``url``, checked against ``registry`` without importing anything.

    Raises:
        ConfigurationError: no class of ``registry`` serves that scheme.
    """
    scheme = urlsplit(url).scheme
    if scheme not in registry:
        raise ConfigurationError(f"no {what} for URL {url!r}; known schemes: {', '.join(sorted(registry))}")
    return scheme


def load_class(registry: Registry, url: str, what: str) -> type:
    """Import the class serving ``url``'s scheme, naming the extra to install when it is missing.

    Raises:
        ConfigurationError: unknown scheme, or the client library is not installed.
    """
    module_name, class_name, extra = registry[check_scheme(registry, url, what)]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None or (exc.name or "").startswith("conveyor"):
            raise
        raise ConfigurationError(
            f"{class_name} needs the {extra!r} extra: pip install 'conveyor[{extra}]' ({exc})"
        ) from exc
    cls: type = getattr(module, class_name)
    return cls
