"""Codec: a message to the bytes a broker stores and back, signed when the app has a secret.

One object, chosen once from the settings by :func:`codec_for`, used by every place that writes
or reads a message body: ``App.send``, the worker's executor (decode, and the body of a retry),
and the CLI. Signing is part of the wire format, not a middleware: a body that does not verify
is never decoded, so no hook ever sees an unsigned message.
"""

from __future__ import annotations

from conveyor.message import Message, decode, encode
from conveyor.signing import sign, unframe, verify

__all__ = ["Codec", "Signed", "codec_for"]


class Codec:
    """Plain JSON bodies. Decoding strips a signature frame without checking it (a worker without a secret)."""

    def encode(self, message: Message, limit: int | None = None) -> bytes:
        """The body of ``message``.

        Raises:
            EncodeError: an argument does not serialize.
            MessageTooLarge: the body is over ``limit`` bytes.
        """
        return encode(message, limit)

    def decode(self, body: bytes) -> Message:
        """The message in ``body``.

        Raises:
            DecodeError: the body is not a message.
            SignatureError: (:class:`Signed` only) the body is unsigned or its signature does not verify.
        """
        return decode(unframe(body))


class Signed(Codec):
    """Bodies framed with their HMAC-SHA256 under a shared secret; unsigned or mis-signed bodies are refused."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def encode(self, message: Message, limit: int | None = None) -> bytes:
        return sign(encode(message, limit), self._secret)

    def decode(self, body: bytes) -> Message:
        return decode(verify(body, self._secret))

    def __repr__(self) -> str:
        return "<Signed codec>"  # never the secret


def codec_for(secret: str | None) -> Codec:
    """The codec for an app's ``secret`` setting: signed with it, or plain."""
    return Codec() if secret is None else Signed(secret)
