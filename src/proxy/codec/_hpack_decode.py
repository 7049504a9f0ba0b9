"""A faster HPACK decoder with hpack's state and limits (RFC 7541; see http2).

hpack.Decoder spends most of a small request's decoding on per-field machinery: a HeaderTuple
object and a DEBUG log call per field, a memoryview slice per field and, for every literal, a
copy of the rest of the block (quadratic in the block's size). This one walks the block with
integer offsets and returns plain (name, value) tuples (NeverIndexedHeaderTuple for fields
sent never-indexed, so a proxy passes that on). The dynamic table, the size limits
(max_header_list_size, max_allowed_table_size) and the errors are hpack's own, so h2's
settings handling and the hot-upgrade export see no difference; Huffman strings go to hpack's
decoder. tests/codec/test_hpack_decode.py checks it against hpack.Decoder.
"""

from __future__ import annotations

from hpack import Decoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
_MAX_SHIFT = 28  # integers past 2^35: a decoding error (RFC 7541 §5.1 allows a limit)


def _integer(data: bytes, pos: int, mask: int) -> tuple[int, int]:
    """The integer whose prefix (the `mask` bits) is in data[pos]; (value, next position)."""
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    size = len(data)
    while True:
        if pos >= size:
            raise HPACKDecodingError("truncated HPACK integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > _MAX_SHIFT:
            raise HPACKDecodingError("HPACK integer too long")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HPACKDecodingError("truncated header block")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 0x7F)
    end = pos + length
    if end > len(data):
        raise HPACKDecodingError("truncated header block")
    text = data[pos:end]
    return (decode_huffman(text) if huffman else text), end


class FastDecoder(Decoder):
    def decode(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        """The block's fields (raw bytes only: `raw` is accepted for hpack's signature)."""
        if type(data) is not bytes:
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries
        limit = self.max_header_list_size
        fields: list[tuple[bytes, bytes]] = []
        inflated = 0
        pos = 0
        size = len(data)
        while pos < size:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = _integer(data, pos, 0x7F)
                if 0 < index <= _STATIC_LENGTH:
                    field = _STATIC[index - 1]
                elif _STATIC_LENGTH < index <= _STATIC_LENGTH + len(dynamic):
                    field = dynamic[index - _STATIC_LENGTH - 1]
                else:
                    raise InvalidTableIndex(f"invalid table index {index}")
                name, value = field
            elif byte & 0x40 or not byte & 0x20:  # a literal, indexed with incremental indexing or not
                mask = 0x3F if byte & 0x40 else 0x0F
                if byte & mask:
                    index, pos = _integer(data, pos, mask)
                    if 0 < index <= _STATIC_LENGTH:
                        name = _STATIC[index - 1][0]
                    elif _STATIC_LENGTH < index <= _STATIC_LENGTH + len(dynamic):
                        name = dynamic[index - _STATIC_LENGTH - 1][0]
                    else:
                        raise InvalidTableIndex(f"invalid table index {index}")
                else:
                    name, pos = _string(data, pos + 1)
                value, pos = _string(data, pos)
                if byte & 0x40:
                    table.add(name, value)
                    field = (name, value)
                elif byte & 0x10:
                    field = NeverIndexedHeaderTuple(name, value)
                else:
                    field = (name, value)
            else:  # a dynamic table size update: only before the first field
                if fields:
                    raise HPACKDecodingError("table size update not at the start of the block")
                new_size, pos = _integer(data, pos, 0x1F)
                if new_size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("encoder exceeded the max allowable table size")
                table.maxsize = new_size
                continue
            fields.append(field)
            inflated += 32 + len(name) + len(value)
            if inflated > limit:
                raise OversizedHeaderListError(f"a header list larger than {limit} has been received")
        if table.maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("encoder did not shrink the table size to within the max")
        return fields
