"""Large REST bodies moved without whole extra copies.

A request body with a Content-Length lands in one buffer of that size, and an answer made of
pieces (``_codec.predict_response``) is written a piece at a time, each once the socket has
taken the one before.
"""

from __future__ import annotations

import logging

from aiohttp import web

from serving._json_dense import DENSE_MIN_BYTES

log = logging.getLogger("serving")
JSON_CONTENT_TYPE = "application/json"
# Pieces are joined up to this size per write; a smaller answer is sent as one body.
_WRITE_BYTES = 1 << 16


async def read_body(request: web.Request, max_bytes: int) -> bytes | bytearray:
    """The whole body; raises ``HTTPRequestEntityTooLarge`` beyond ``max_bytes`` and
    ``ConnectionResetError`` when it ends early. Joining chunks at the end would hold a large
    body twice."""
    length = request.content_length
    if length is None or length < DENSE_MIN_BYTES:
        return await request.read()  # aiohttp applies client_max_size
    if length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=length)
    body = bytearray(length)
    filled = 0
    with memoryview(body) as view:
        async for chunk in request.content.iter_any():
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
    if filled != length:
        raise ConnectionResetError(f"the body ended after {filled} of {length} bytes")
    return body


async def send_pieces(request: web.Request, status: int, pieces: list[bytes]) -> web.StreamResponse:
    """Send an answer made of pieces with its Content-Length. The writer waits for the socket
    between writes, so the transport never buffers a copy of the whole answer."""
    headers = {"Content-Type": JSON_CONTENT_TYPE}
    length = sum(map(len, pieces))
    if length <= _WRITE_BYTES:
        return web.Response(body=b"".join(pieces), status=status, headers=headers)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    try:
        await response.prepare(request)
        batch: list[bytes] = []
        size = 0
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= _WRITE_BYTES:
                await response.write(b"".join(batch))
                batch, size = [], 0
        await response.write_eof(b"".join(batch))
    except ConnectionError as exc:
        # The answer was computed and counted; only its delivery failed, by the client's doing.
        log.info("client left before its answer was sent on %s: %s", request.path, exc)
    return response
