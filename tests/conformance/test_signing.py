"""Message signing: a worker with a secret runs only messages signed with it, on every broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import App, SignatureError
from conveyor.brokers import Envelope
from conveyor.signing import sign, unframe, verify
from conveyor.testing import drain


@pytest.fixture
def app(broker_url: str, backend_url: str) -> Iterator[App]:
    instance = App("signed", broker=broker_url, backend=backend_url, secret="s3cret")
    yield instance
    instance.close()


def test_sign_then_verify_round_trips_and_detects_tampering() -> None:
    framed = sign(b'{"id":"1"}', "s3cret")
    assert verify(framed, "s3cret") == b'{"id":"1"}'
    assert unframe(framed) == b'{"id":"1"}'
    with pytest.raises(SignatureError, match="does not match"):
        verify(framed, "other")
    with pytest.raises(SignatureError, match="does not match"):
        verify(framed.replace(b'"1"', b'"2"'), "s3cret")
    with pytest.raises(SignatureError, match="not signed"):
        verify(b'{"id":"1"}', "s3cret")


def test_worker_with_a_secret_dead_letters_unsigned_and_missigned_messages(app: App) -> None:
    # Given an app with a secret, a properly signed task, an unsigned one and one signed with another key
    ran: list[str] = []

    @app.task(name="t")
    def t(tag: str) -> None:
        ran.append(tag)

    t.delay("signed")
    unsigned = b'{"v":1,"id":"u1","task":"t","args":["unsigned"]}'
    app.broker.enqueue([Envelope("u1", "default", unsigned), Envelope("m1", "default", sign(unsigned, "wrong"))])
    # When the worker runs them
    drain(app)
    # Then only the signed one ran; the others are dead letters saying why
    assert ran == ["signed"]
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert "not signed" in reasons["u1"]
    assert "does not match" in reasons["m1"]


def test_retried_messages_stay_signed(app: App) -> None:
    attempts: list[int] = []

    @app.task(name="flaky", retries=1, backoff=0.01)
    def flaky() -> str:
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise ConnectionError("first try fails")
        return "ok"

    r = flaky.delay()
    drain(app)
    assert r.get(timeout=1) == "ok"
    assert app.broker.dead_letters() == []
