"""Every RabbitMQ queue the AMQP broker declares is named under its URL's prefix: pure, no server.

The tests isolate each test by a queue prefix in one vhost per run (tests/vhosts.py), which holds only
while no declared name escapes the prefix. The broker declares no exchange: it publishes through the
default one, and its delay levels dead-letter into it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conveyor.brokers.amqp import names
from conveyor.brokers.amqp.names import declarations, queue_names, registry_name

AMQP_PACKAGE = Path(names.__file__).parent


def test_every_declared_queue_and_the_registry_start_with_the_prefix() -> None:
    declared = [name for name, _ in declarations(queue_names("cvtest-1", "mail"))] + [registry_name("cvtest-1")]
    assert len(declared) == 22
    assert all(name.startswith("cvtest-1.") for name in declared), declared
    dead_letter_targets = {args.get("x-dead-letter-routing-key") for _, args in declarations(queue_names("p", "q"))}
    assert dead_letter_targets <= {None, "p.q.q.eta"}


def test_the_broker_declares_no_exchange_and_names_queues_only_through_names_py() -> None:
    calls: list[str] = []
    declares = 0
    for module in AMQP_PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in {"exchange_declare", "exchange_bind", "queue_bind"}:
                    calls.append(f"{module.name}: {node.func.attr}")
                declares += node.func.attr == "queue_declare"
                if node.func.attr == "queue_declare" and node.args and isinstance(node.args[0], ast.Constant):
                    calls.append(f"{module.name}: queue_declare of a literal name")
    assert declares >= 3  # the walk does see the broker's declarations
    assert calls == []
