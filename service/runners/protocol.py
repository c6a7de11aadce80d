"""Frames between a worker and its runners: a 5-byte header (length, kind), then the payload.

JSON frames carry messages; bytes frames carry bodies, so a response body is never
escaped or base64-encoded. The standard library's multiprocessing.connection frames
pickles, which a worker must never unpickle from a process running untrusted code.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct("!IB")
JSON, BYTES = ord("J"), ord("B")
MAX_FRAME = 64 * 1024 * 1024  # a frame over this is a broken (or hostile) runner
# A streamed response: a STREAM_HEAD message (status, headers), its chunks as bytes
# frames (log, output and progress messages may come between them), then STREAM_END
# (with `failed` when the script's generator raised).
STREAM_HEAD, STREAM_END = "stream", "end"
# Bound once: a script that patches json.dumps or json.loads in its runner breaks only
# its own answers, never the frames its runner speaks.
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode
_decode = json.JSONDecoder().decode


class ProtocolError(Exception):
    """The other side closed the connection or sent something that is not a frame."""


def encode(message: dict[str, Any]) -> bytes:
    payload = _encode(message).encode()
    return HEADER.pack(len(payload), JSON) + payload


def encode_bytes(data: bytes) -> bytes:
    return HEADER.pack(len(data), BYTES) + data


def send(sock: socket.socket, message: dict[str, Any], body: bytes | None = None) -> None:
    """One message, and a bytes frame after it when `body` is given, in one write."""
    data = encode(message)
    if body is not None:
        data += encode_bytes(body)
    sock.sendall(data)


def decode(data: bytes) -> dict[str, Any] | bytes:
    """The first frame of `data`, received whole (a message that came with descriptors)."""
    reader = Reader(None)
    reader.buffer += data
    return reader.message()


class Reader:
    """Reads frames from a socket; its timeout is the caller's business (settimeout)."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock  # None: the frames are all in `buffer` already (decode)
        self.buffer = bytearray()

    def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            if self.sock is None:
                raise ProtocolError("a frame cut short")
            chunk = self.sock.recv(max(65536, size - len(self.buffer)))
            if not chunk:
                raise ProtocolError("connection closed")
            self.buffer += chunk

    def frame(self) -> tuple[int, bytes]:
        self._fill(HEADER.size)
        length, kind = HEADER.unpack_from(self.buffer)
        if length > MAX_FRAME or kind not in (JSON, BYTES):
            raise ProtocolError("not a frame")
        self._fill(HEADER.size + length)
        payload = bytes(self.buffer[HEADER.size : HEADER.size + length])
        del self.buffer[: HEADER.size + length]
        return kind, payload

    def message(self) -> dict[str, Any] | bytes:
        """The next frame: a dict for a JSON frame, bytes for a bytes frame."""
        kind, payload = self.frame()
        if kind == BYTES:
            return payload
        try:
            message = _decode(payload.decode())
        except ValueError:
            raise ProtocolError("not JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("not a message")
        return message

    def pending(self) -> bool:
        return bool(self.buffer)
