"""List cursors: a position in GET /tasks' newest-first order, opaque to whoever holds it.

A position is a score (a task's submission time) and how many of the tasks with exactly that
score were passed, in the order Redis lists ties. It names no task. But a page may stop among
tasks its caller may not see (a request examines a bounded number), and the position would
then tell when one of them was submitted. So with authentication on (SECRET_KEY set), the
cursor is encrypted and authenticated under keys derived from SECRET_KEY: encrypt-then-MAC, with
an HMAC-SHA256 keystream over a random nonce and an HMAC-SHA256 tag (the standard library's
primitives only). With authentication off, every caller sees every task, and the position is
plain base64. PREVIOUS_SECRET_KEYS still open cursors during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets

# A count beyond any real run of ties would only make Redis read that many entries.
_MAX_TIES = 1_000_000
_NONCE = 16
_TAG = 16


def _derive(secret: str, purpose: bytes) -> bytes:
    return hmac.new(secret.encode(), b"taskstream.cursor." + purpose, hashlib.sha256).digest()


def _keystream(key: bytes, nonce: bytes, size: int) -> bytes:
    blocks = (size + 31) // 32
    return b"".join(
        hmac.new(key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(blocks)
    )[:size]


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


class Cursors:
    def __init__(self, secret_key: str = "", previous_secret_keys: tuple[str, ...] = ()):
        # (encryption key, MAC key) per secret, the current one first.
        secrets_in_use = [k for k in (secret_key, *previous_secret_keys) if k]
        self._keys = [(_derive(k, b"encrypt"), _derive(k, b"mac")) for k in secrets_in_use]

    def encode(self, score: float, passed: int) -> str:
        plain = f"{score!r} {passed}".encode()
        if self._keys:
            encrypt, mac = self._keys[0]
            nonce = secrets.token_bytes(_NONCE)
            sealed = nonce + _xor(plain, _keystream(encrypt, nonce, len(plain)))
            plain = sealed + hmac.new(mac, sealed, hashlib.sha256).digest()[:_TAG]
        return base64.urlsafe_b64encode(plain).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[float, int]:
        """The position a cursor of ours holds; ValueError for anything else."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if self._keys:
            raw = self._open(raw)
        score, passed = raw.decode("ascii").split(" ")
        # Redis refuses NaN as a score bound; no cursor this service gives out holds one.
        if math.isnan(float(score)) or not (passed.isdigit() and int(passed) <= _MAX_TIES):
            raise ValueError("not a position")
        return float(score), int(passed)

    def _open(self, raw: bytes) -> bytes:
        if len(raw) <= _NONCE + _TAG:
            raise ValueError("too short")
        sealed, tag = raw[:-_TAG], raw[-_TAG:]
        nonce, body = sealed[:_NONCE], sealed[_NONCE:]
        for encrypt, mac in self._keys:
            if hmac.compare_digest(tag, hmac.new(mac, sealed, hashlib.sha256).digest()[:_TAG]):
                return _xor(body, _keystream(encrypt, nonce, len(body)))
        raise ValueError("not sealed with our key")
