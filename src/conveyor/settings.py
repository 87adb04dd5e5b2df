"""Settings: every knob conveyor has, its default and its unit, in one frozen object.

``App(...)`` keyword arguments become a :class:`Settings`; ``CONVEYOR_<NAME>`` environment
variables override them. This module is the only place conveyor reads the environment, and it
does so when an app is built, never at import time. An unknown keyword or an unknown
``CONVEYOR_*`` variable is a :class:`~conveyor.errors.ConfigurationError`, never ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from conveyor.errors import ConfigurationError

#: The embedded default: a SQLite file in the current directory, for broker and results.
DEFAULT_URL = "sqlite:///conveyor.db"

#: Environment variables with this prefix override settings.
ENV_PREFIX = "CONVEYOR_"

#: Variables with the prefix that are not settings (read by the CLI, not by Settings).
_NOT_SETTINGS = frozenset({"CONVEYOR_APP"})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration of an :class:`~conveyor.App`.

    Every duration is in seconds; every size is in bytes.
    """

    #: Where messages live: ``sqlite:///path``, ``memory://``, ``redis://host:port/db``, ``amqp://...``,
    #: ``postgresql://user@host/db?schema=name``.
    broker_url: str = DEFAULT_URL
    #: Where results live; None means the broker's URL (the same engine). Required with ``amqp://``:
    #: RabbitMQ is no result store (the app checks when it is built).
    backend_url: str | None = None
    #: Queue a task goes to when neither the task nor the call names one.
    default_queue: str = "default"
    #: Seconds a reserved message stays leased without a heartbeat before it is redelivered.
    lease: float = 30.0
    #: Deliveries without an acknowledgement after which a message is dead-lettered as poison.
    max_deliveries: int = 5
    #: Seconds results (and failures) are kept.
    result_ttl: float = 86_400.0
    #: Record STARTED when a worker begins a task (one extra result write per task).
    track_started: bool = True
    #: Worker processes (or threads); None means the number of CPUs.
    concurrency: int | None = None
    #: Tasks a process-pool worker child reserves per round trip (1 turns prefetching off); doubled, up to
    #: 4 times, while full batches run in under 20 ms (worker/backlog.py, BatchSize). Tasks it has not
    #: started go back to the queue as soon as the running one passes 5 ms, so long tasks never hold short ones.
    prefetch: int = 16
    #: Seconds a graceful stop waits for running tasks before stopping them hard.
    shutdown_grace: float = 30.0
    #: Seconds a starting worker waits for its broker and result backend to answer before it exits with an error.
    startup_timeout: float = 10.0
    #: Tasks a worker child runs before it is replaced (bounds leaks); None means no limit.
    max_tasks_per_child: int | None = None
    #: Resident memory, in MiB, above which a worker child is replaced after its current task; None means no limit.
    max_memory_per_child: int | None = None
    #: Largest encoded message accepted at enqueue, in bytes.
    max_message_size: int = 1_048_576
    #: Shared secret for HMAC-SHA256 message signing; None disables signing.
    secret: str | None = None
    #: Log level of the worker and beat: DEBUG, INFO, WARNING, ERROR.
    log_level: str = "INFO"
    #: Seconds the beat leader's lease lasts without renewal: a standby takes over this long after the leader dies.
    beat_lease: float = 10.0
    #: Longest sleep of a beat between two ticks, in seconds (lease renewal, standby take-over attempts).
    beat_interval: float = 1.0
    #: Seconds a slot may be late and still fire; older slots were missed and follow the entry's missed policy.
    beat_grace: float = 60.0
    #: Publish task and worker events (received, succeeded, worker online...) to the result backend's event log,
    #: in one batch per worker every half second; ``conveyor events`` and the dashboard read them.
    events: bool = True
    #: Seconds events are kept in the event log (which also keeps at most 10,000 batches).
    events_ttl: float = 3600.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), str(field.type))
        for name in ("broker_url", "backend_url"):
            url = getattr(self, name)
            if url is not None:
                check_url_shape(name, url)
        _check_positive("lease", self.lease)
        _check_positive("result_ttl", self.result_ttl)
        _check_positive("shutdown_grace", self.shutdown_grace)
        _check_positive("startup_timeout", self.startup_timeout)
        _check_positive("events_ttl", self.events_ttl)
        if self.max_deliveries < 1:
            raise ConfigurationError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if self.prefetch < 1:
            raise ConfigurationError(f"prefetch must be at least 1, got {self.prefetch}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {self.concurrency}")
        for name in ("max_tasks_per_child", "max_memory_per_child"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {value}")
        if self.max_message_size < 1024:
            raise ConfigurationError(f"max_message_size must be at least 1024 bytes, got {self.max_message_size}")
        self._check_beat()
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigurationError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    def _check_beat(self) -> None:
        for name in ("beat_lease", "beat_interval", "beat_grace"):
            _check_positive(name, getattr(self, name))
        if self.beat_interval * 2 > self.beat_lease:
            raise ConfigurationError(
                f"beat_interval ({self.beat_interval:g} s) must be at most half of beat_lease ({self.beat_lease:g} s), "
                "or the leader's lease lapses between two renewals"
            )
        if self.beat_grace < self.beat_lease + self.beat_interval:
            raise ConfigurationError(
                f"beat_grace ({self.beat_grace:g} s) must be at least beat_lease + beat_interval "
                f"({self.beat_lease + self.beat_interval:g} s), or the slots of a leader take-over count as missed"
            )

    def with_absolute_paths(self, cwd: Path) -> Settings:
        """These settings with a relative SQLite path made absolute against ``cwd``.

        The app does this once, when it is built: ``sqlite:///conveyor.db`` then names one file for the
        life of the process (a later ``chdir`` changes nothing), and the worker logs the path it really uses.
        """
        broker = absolute_sqlite_url(self.broker_url, cwd)
        backend = None if self.backend_url is None else absolute_sqlite_url(self.backend_url, cwd)
        if (broker, backend) == (self.broker_url, self.backend_url):
            return self
        return dataclasses.replace(self, broker_url=broker, backend_url=backend)

    @property
    def result_url(self) -> str:
        """The result backend URL, defaulting to the broker's."""
        return self.backend_url or self.broker_url

    @classmethod
    def build(cls, overrides: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Settings:
        """Resolve settings from keyword arguments, then ``CONVEYOR_*`` variables on top.

        Args:
            overrides: the keyword arguments given to ``App(...)``.
            environ: the environment to read; ``os.environ`` when None.

        Raises:
            ConfigurationError: an unknown name, or a value that does not parse.
        """
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = dict(overrides)
        for name, raw in _conveyor_variables(os.environ if environ is None else environ).items():
            if name not in known:
                raise ConfigurationError(
                    f"unknown environment variable {ENV_PREFIX}{name.upper()}; "
                    f"settings are {', '.join(ENV_PREFIX + k.upper() for k in sorted(known))}"
                )
            values[name] = _cast(name, raw, known[name].type)
        return cls(**values)

    def __repr__(self) -> str:
        """Every field, with the URLs' passwords and the signing secret masked (``repr(app.settings)`` gets logged)."""
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_url") and isinstance(value, str):
                value = redact_url(value)
            elif field.name == "secret" and value is not None:
                value = MASK
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"


#: What a password or secret is replaced with wherever conveyor prints a URL or a setting.
MASK = "***"
_URL_WITH_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s:/?#@]*:)(?P<password>[^\s/]*)(?P<at>@)")
_PASSWORD_PARAMETER = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s#]*)")


def redact_url(url: str) -> str:
    """``url`` with any password (in the authority or a ``password=`` parameter) replaced by ``***``.

    The one place conveyor masks a URL: ``repr(app)``, ``repr(settings)``, ``conveyor status``, the
    worker banner, broker error messages and the CLI's error lines all go through it.
    """
    return redact_text(url)


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with the password of every URL in it replaced by ``***``."""
    masked = _URL_WITH_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", text)
    return _PASSWORD_PARAMETER.sub(rf"\g<head>{MASK}", masked)


class SettingsDict(TypedDict, total=False):
    """The keyword arguments of ``App(...)`` that are settings, for mypy: ``App("x", lease="30")`` is a type error.

    Each is a field of :class:`Settings` (same name, type and meaning); ``broker=`` and ``backend=``
    stand for ``broker_url`` and ``backend_url``. tests/unit/test_settings.py checks the two stay in step.
    """

    broker_url: str
    backend_url: str | None
    default_queue: str
    lease: float
    max_deliveries: int
    result_ttl: float
    track_started: bool
    concurrency: int | None
    prefetch: int
    shutdown_grace: float
    startup_timeout: float
    max_tasks_per_child: int | None
    max_memory_per_child: int | None
    max_message_size: int
    secret: str | None
    log_level: str
    beat_lease: float
    beat_interval: float
    beat_grace: float
    events: bool
    events_ttl: float


#: What each field type accepts, and how an error names it.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number of seconds"),
    "bool": ((bool,), "True or False"),
}


def _check_type(name: str, value: object, annotation: str) -> None:
    """Refuse a value of the wrong type, naming the setting and what it takes (``lease='30'``, ``track_started='no'``).

    A bool is no number here (``lease=True`` is a mistake), and an int is a fine float.
    """
    kind = annotation.replace(" ", "")
    optional = kind.endswith("|None")
    base = kind.removesuffix("|None")
    if value is None and optional:
        return
    accepted, described = _TYPES[base]
    if isinstance(value, accepted) and (base == "bool" or not isinstance(value, bool)):
        return
    hint = " (a string is not a bool: 'no' would be true)" if base == "bool" and isinstance(value, str) else ""
    none = " or None" if optional else ""
    raise ConfigurationError(
        f"setting {name} must be {described}{none} ({base}), got {value!r} ({type(value).__name__}){hint}"
    )


def check_url_shape(name: str, url: str) -> None:
    """Refuse a URL whose shape is wrong for its engine, without importing or connecting anything.

    ``redis://host/abc``: redis-py silently uses database 0 for a path that is not a number, so a
    typo would send every task to another database than the workers read.

    Raises:
        ConfigurationError: a Redis URL whose path is not a database number.
    """
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigurationError(
                f"setting {name}: the path of a Redis URL is the database number (redis://host:6379/0), "
                f"got {db!r} in {redact_url(url)!r}"
            )


def absolute_sqlite_url(url: str, cwd: Path) -> str:
    """``sqlite:///relative.db`` made ``sqlite:////<cwd>/relative.db``; any other URL unchanged."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        return url
    raw = parts.path[1:]
    if not raw or raw == ":memory:" or raw.startswith("/"):
        return url
    query = f"?{parts.query}" if parts.query else ""
    return f"sqlite:///{cwd / raw}{query}"


def sqlite_file(url: str) -> Path | None:
    """The database file a ``sqlite://`` URL names (None for any other URL, or one with no file path)."""
    parts = urlsplit(url)
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.scheme != "sqlite" or parts.netloc or not raw or raw == ":memory:":
        return None
    return Path(raw)


def _conveyor_variables(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key not in _NOT_SETTINGS
    }


def _cast(name: str, raw: str, annotation: object) -> Any:
    """Turn an environment string into the field's type (annotations are strings here)."""
    kind = str(annotation).replace(" ", "")
    optional = kind.endswith("|None")
    base = kind.removesuffix("|None")
    if optional and raw.strip().lower() in {"", "none", "null"}:
        return None
    try:
        if base == "bool":
            return _parse_bool(raw)
        if base == "int":
            return int(raw)
        if base == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {base}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive seconds, got {value}")
