"""Message signing: HMAC-SHA256 over the encoded message with a shared secret (pure).

A signed body is framed as ``sig1:<64 hex digits>:<message bytes>``. A JSON message never starts
with ``s``, so a worker tells signed from unsigned bodies by their first bytes. A worker with a
secret runs only messages whose signature verifies; the others go to the dead-letter queue.
A worker without a secret accepts both (it strips the frame).
"""

from __future__ import annotations

import hashlib
import hmac

from conveyor.errors import SignatureError

_PREFIX = b"sig1:"
_DIGEST_HEX = 64
_HEADER = len(_PREFIX) + _DIGEST_HEX + 1


def sign(body: bytes, secret: str) -> bytes:
    """Frame ``body`` with its HMAC-SHA256 under ``secret``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return _PREFIX + digest + b":" + body


def is_signed(data: bytes) -> bool:
    """True if ``data`` carries a signature frame."""
    return data.startswith(_PREFIX)


def unframe(data: bytes) -> bytes:
    """The message bytes of a signed or unsigned body, without checking any signature."""
    return data[_HEADER:] if is_signed(data) else data


def verify(data: bytes, secret: str) -> bytes:
    """Check the signature frame and return the message bytes.

    Raises:
        SignatureError: the body is unsigned, malformed, or signed with another secret.
    """
    if not is_signed(data):
        raise SignatureError("message is not signed, and this worker requires signed messages (secret is set)")
    if len(data) < _HEADER or data[_HEADER - 1 : _HEADER] != b":":
        raise SignatureError("malformed signature frame")
    body = data[_HEADER:]
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, data[len(_PREFIX) : _HEADER - 1]):
        raise SignatureError("signature does not match: signed with another secret, or altered in transit")
    return body
