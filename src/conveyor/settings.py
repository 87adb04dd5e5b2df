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
from typing import Any

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

    #: Where messages live: ``sqlite:///path``, ``memory://``, ``redis://host:port/db``, ``amqp://...``.
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
    #: Tasks a process-pool worker child reserves per round trip (1 turns prefetching off). Tasks it
    #: has not started go back to the queue as soon as the running one passes 5 ms, so long tasks
    #: never hold short ones.
    prefetch: int = 16
    #: Seconds a graceful stop waits for running tasks before stopping them hard.
    shutdown_grace: float = 30.0
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
        _check_positive("lease", self.lease)
        _check_positive("result_ttl", self.result_ttl)
        _check_positive("shutdown_grace", self.shutdown_grace)
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

    @property
    def result_url(self) -> str:
        """The result backend URL, defaulting to the broker's."""
        return self.backend_url or self.broker_url

    @classmethod
    def build(cls, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
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
        values = dict(overrides)
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
