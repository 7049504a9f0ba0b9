"""Hot upgrade: hold back the frames that would open streams, so a busy HTTP/2 server connection
reaches an idle point (no open stream) while its client keeps sending (see http2: hot upgrade).

A client with requests always in flight (h2load -m10, a browser) may never leave a connection
idle on its own. In hold mode the codec goes on processing what the streams already open may
need (their DATA, WINDOW_UPDATE, RST_STREAM, trailers; PING, SETTINGS) and keeps everything
else as bytes, in order: the HEADERS that open new streams and every later header block (HPACK
decodes blocks in order), every frame on a held stream, and from a GOAWAY or any other frame
whose order matters on, everything. The kept frames commute with the processed ones, so the
held bytes are what the connection's next owner (the new generation) must read first.

Only complete frames are processed; a partial one waits in `tail` (part of the held bytes).
"""

from __future__ import annotations

import struct

_FRAME = struct.Struct("!IBI")
_END_HEADERS = 0x4
# Frame types
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PING, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 2, 3, 4, 6, 8, 9
_ON_A_STREAM = frozenset((_DATA, _PRIORITY, _RST, _WINDOW_UPDATE))


class Hold:
    __slots__ = ("held", "tail", "blocks", "in_block", "block_held", "ids", "everything", "broken")

    def __init__(self, tail: bytes, in_block: bool, everything: bool) -> None:
        self.held = bytearray()  # complete frames kept, in order
        self.tail = tail  # the start of a frame not complete yet
        self.blocks = False  # a header block was held: every later one is too
        self.in_block = in_block  # inside a header block (CONTINUATION frames follow)
        self.block_held = False  # ... and that block is held
        self.ids: set[int] = set()  # streams opened by held frames
        self.everything = everything  # from here on nothing is processed
        self.broken = False  # a frame over the size limit: let the codec answer it

    def size(self) -> int:
        return len(self.held) + len(self.tail)

    def release(self) -> bytes:
        """The held bytes, in order (the last frame maybe partial)."""
        return bytes(self.held) + self.tail

    def split(self, data: bytes, highest: int, max_frame: int) -> bytes:
        """The complete frames of `data` to process now; keeps the others (see the module doc).
        `highest`: the highest stream id the codec has seen opened."""
        if self.everything:  # (not parsed: it may be the rest of a client preface)
            self.held += self.tail + data
            self.tail = b""
            return b""
        if self.tail:
            data = self.tail + data
        pos = 0
        size = len(data)
        out: list[bytes] = []
        held = self.held
        unpack = _FRAME.unpack_from
        while size - pos >= 9:
            head, flags, sid = unpack(data, pos)
            length = head >> 8
            if length > max_frame:
                self.broken = True
                break
            end = pos + 9 + length
            if end > size:
                break
            kind = head & 0xFF
            sid &= 0x7FFFFFFF
            if self.everything:
                hold = True
            elif kind == _CONTINUATION and self.in_block:
                hold = self.block_held
                self.in_block = not flags & _END_HEADERS
            elif self.in_block and self.block_held:
                hold = self.everything = True  # a broken header block: the next owner answers it
            elif kind == _HEADERS:
                # Trailers of a stream already open pass, as long as no block was held before.
                hold = self.blocks or sid > highest or sid in self.ids
                if hold:
                    self.blocks = True
                    if sid > highest:
                        self.ids.add(sid)
                self.in_block = not flags & _END_HEADERS
                self.block_held = hold
            elif kind in _ON_A_STREAM:
                hold = sid in self.ids or sid > highest
            elif kind == _PING or kind == _SETTINGS or kind == _CONTINUATION:
                # PING and SETTINGS commute with opening a stream; a stray CONTINUATION is the
                # codec's to refuse.
                hold = False
            else:  # GOAWAY (the held streams came before it), PUSH_PROMISE, extensions
                hold = self.everything = True
            if hold:
                held += data[pos:end]
            else:
                out.append(data[pos:end])
            pos = end
        self.tail = data[pos:] if pos < size else b""
        return b"".join(out)
