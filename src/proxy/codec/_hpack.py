"""Faster HPACK coding with hpack's state and limits (RFC 7541; see http2).

hpack spends most of a small request's coding on per-field machinery: a HeaderTuple object, a
few DEBUG log calls and bytearray round trips per field; its decoder slices a memoryview per
field and copies the rest of the block for every literal (quadratic in the block's size); its
encoder searches the dynamic table with a Python loop per field. These subclasses do the same
work with integer offsets, plain tuples and C-level searches:

* FastDecoder returns plain (name, value) tuples (NeverIndexedHeaderTuple for fields sent
  never-indexed, so a proxy passes that on).
* FastEncoder emits exactly the bytes hpack.Encoder would.

The dynamic tables, the size limits (max_header_list_size, max_allowed_table_size), pending
size updates, Huffman coding and the errors are hpack's own objects, so h2's settings handling
and the hot-upgrade export see no difference. tests/codec/test_hpack.py checks both against
hpack, byte for byte.
"""

from __future__ import annotations

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_MAP = HeaderTable.STATIC_TABLE_MAPPING  # name -> (first index, {value: index})
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


def _integer_bytes(value: int, prefix: int, mask: int) -> bytes:
    """`value` with `prefix` in the first byte's high bits (mask: the low bits' maximum)."""
    if value < mask:
        return bytes((prefix | value,))
    out = [prefix | mask]
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class FastEncoder(Encoder):
    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        """A block for `headers` (bytes pairs; NeverIndexedHeaderTuple: never indexed)."""
        table = self.header_table
        out: list[bytes] = []
        if table.resized:
            out.append(self._encode_table_size_change())
            table.resized = False
        dynamic = table.dynamic_entries
        code = self.huffman_coder.encode if huffman else None
        for field in headers:
            name = field[0]
            value = field[1]
            sensitive = isinstance(field, HeaderTuple) and not field.indexable
            static = _STATIC_MAP.get(name)
            if static is not None:
                index = static[1].get(value)
                if index is not None:
                    out.append(bytes((0x80 | index,)))  # static indexes are all below 127
                    continue
            pair = (name, value)
            if dynamic:
                try:
                    index = dynamic.index(pair) + _STATIC_LENGTH + 1
                except ValueError:
                    pass
                else:
                    out.append(_integer_bytes(index, 0x80, 0x7F))
                    continue
            # A literal value; the name indexed if any entry has it (static first, as hpack).
            if static is not None:
                name_index = static[0]
            else:
                name_index = 0
                for i, entry in enumerate(dynamic):
                    if entry[0] == name:
                        name_index = i + _STATIC_LENGTH + 1
                        break
            if code is not None:
                value_code = code(value)
                value_part = _integer_bytes(len(value_code), 0x80, 0x7F) + value_code
            else:
                value_part = _integer_bytes(len(value), 0, 0x7F) + value
            if name_index:
                if sensitive:
                    out.append(_integer_bytes(name_index, 0x10, 0x0F) + value_part)
                else:
                    out.append(_integer_bytes(name_index, 0x40, 0x3F) + value_part)
            else:
                if code is not None:
                    name_code = code(name)
                    name_part = _integer_bytes(len(name_code), 0x80, 0x7F) + name_code
                else:
                    name_part = _integer_bytes(len(name), 0, 0x7F) + name
                out.append((b"\x10" if sensitive else b"\x40") + name_part + value_part)
            if not sensitive:
                table.add(name, value)
        return b"".join(out)
