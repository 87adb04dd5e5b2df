"""The routing table: which queue a task goes to by its name, ``App(routes={"shop.mail.*": "mail"})``.

Keys are task names or ``fnmatch`` patterns (``*``, ``?``, ``[...]``); an exact name wins over any
pattern, then patterns are tried in the order given. The queue a message goes to is, first found:
the call's ``queue=``, the task's ``@app.task(queue=...)``, the routing table, the app's
``default_queue``. Resolved once per task, when it is registered: routing costs nothing per call.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping

from conveyor.errors import ConfigurationError


class Routes:
    """A routing table: task name or pattern -> queue.

    Raises:
        ConfigurationError: a key or a queue that is not a non-empty string.
    """

    def __init__(self, table: Mapping[str, str] | None = None) -> None:
        table = dict(table or {})
        for pattern, queue in table.items():
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(f"routes keys must be task names or patterns, got {pattern!r}")
            if not isinstance(queue, str) or not queue:
                raise ConfigurationError(f"routes[{pattern!r}] must name a queue, got {queue!r}")
        self.table = table
        self._exact = {p: q for p, q in table.items() if not _is_pattern(p)}
        self._patterns = [(re.compile(fnmatch.translate(p)), q) for p, q in table.items() if _is_pattern(p)]

    def __repr__(self) -> str:
        return f"Routes({self.table!r})"

    def queue_for(self, task_name: str) -> str | None:
        """The queue the table routes ``task_name`` to, or None when no entry matches."""
        found = self._exact.get(task_name)
        if found is not None:
            return found
        for pattern, queue in self._patterns:
            if pattern.match(task_name):
                return queue
        return None


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")
