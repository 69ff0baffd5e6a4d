"""JSON-lines framing with a line-length limit."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from katapool.protocol.analysis import error_response

# Lines handled between two turns of the event loop: a client sending a flood of lines in one
# read or one WebSocket frame (8 MB of one-character lines is four million of them) must not
# stall every other client, the health checks and the engines' output for seconds.
LINES_PER_TURN = 256

_ID = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.){0,200})"')


class LineFramer:
    """Split a byte stream into lines; a line longer than ``limit`` is skipped whole and
    reported once (as None), so one bad line never desynchronises the stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False
        self._skipped_head = b""

    def feed(self, data: bytes) -> list[bytes | tuple[None, bytes]]:
        out: list[bytes | tuple[None, bytes]] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if not self._skipping and len(self._buf) > self.limit:
                    self._skipping = True
                    self._skipped_head = bytes(self._buf[:4096])
                if self._skipping:
                    self._buf.clear()
                return out
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if self._skipping:
                self._skipping = False
                out.append((None, self._skipped_head))
            elif len(line) > self.limit:
                out.append((None, line[:4096]))
            elif line.strip():
                out.append(line)


    def finish(self) -> list[bytes | tuple[None, bytes]]:
        """End of input: what is left is a last line without its newline."""
        if self._skipping:
            self._skipping = False
            return [(None, self._skipped_head)]
        rest, self._buf = bytes(self._buf), bytearray()
        if len(rest) > self.limit:
            return [(None, rest[:4096])]
        return [rest] if rest.strip() else []


def oversized_error(limit: int, head: bytes) -> dict[str, Any]:
    """KataGo-style error for a line over the limit, with the query's id when it can be seen."""
    found = _ID.search(head)
    rid = found.group(1).decode("utf-8", errors="replace") if found else None
    return error_response(f"query line is longer than this server's limit of {limit} bytes "
                          "(limits.max_line_bytes): not read", rid)


def text_lines(text: str) -> Iterator[str]:
    """The newline-separated lines of a WebSocket frame, one at a time (a frame of millions
    of short lines would make ``split`` a list of millions of strings)."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]
