"""Faster HPACK coding with hpack's state and limits (RFC 7541; see http2).

hpack spends most of a small request's coding on per-field machinery: a HeaderTuple object, a
few DEBUG log calls and bytearray round trips per field; its decoder slices a memoryview per
field and copies the rest of the block for every literal (quadratic in the block's size); its
encoder searches the dynamic table with a Python loop per field; its Huffman coders go a nibble
(decoding) or a big integer (encoding) at a time in Python. These subclasses do the same work
with integer offsets, plain tuples, C-level searches and table-driven Huffman loops:

* FastDecoder returns plain (name, value) tuples (NeverIndexedHeaderTuple for fields sent
  never-indexed, so a proxy passes that on).
* FastEncoder emits exactly the bytes hpack.Encoder would.

The dynamic tables, the size limits (max_header_list_size, max_allowed_table_size), pending
size updates and the errors are hpack's own objects, so h2's settings handling and the
hot-upgrade export see no difference. tests/codec/test_hpack.py checks both against hpack,
byte for byte.

Compiled by mypyc (scripts/build-native) like the HTTP/1 codec: the types here are what makes
the loops C loops, and where a field may be a NeverIndexedHeaderTuple it is typed `Any` (an
object), never `tuple[bytes, bytes]` (mypyc would unbox it and box a plain tuple again).
"""

from __future__ import annotations

from typing import Any, Final

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE
from hpack.table import HeaderTable

_STATIC: Final[tuple[tuple[bytes, bytes], ...]] = HeaderTable.STATIC_TABLE
# name -> (first index, {value: index})
_STATIC_MAP: Final[dict[bytes, tuple[int, dict[bytes, int]]]] = HeaderTable.STATIC_TABLE_MAPPING
_STATIC_LENGTH: Final = 61
_MAX_SHIFT: Final = 28  # integers past 2^35: a decoding error (RFC 7541 §5.1 allows a limit)
_INDEXED: Final[list[bytes]] = [bytes((0x80 | i,)) for i in range(128)]  # static indexes are all below 127

# hpack's Huffman decoding machine (a state and a nibble -> the next state, flags, a symbol),
# one int per transition: next state << 16 | flags << 8 | symbol.
_H_COMPLETE: Final = HUFFMAN_COMPLETE << 8
_H_EMIT: Final = HUFFMAN_EMIT_SYMBOL << 8
_H_FAIL: Final = HUFFMAN_FAIL << 8
_H_TABLE: Final[list[int]] = [state << 16 | flags << 8 | symbol for state, flags, symbol in HUFFMAN_TABLE]
_H_CODES: Final[list[int]] = list(REQUEST_CODES)
_H_LENGTHS: Final[list[int]] = list(REQUEST_CODES_LENGTH)


def huffman_decode(data: bytes, start: int, end: int) -> bytes:
    """data[start:end] Huffman-decoded, as hpack's decode_huffman (the same errors)."""
    table = _H_TABLE
    out: list[int] = []
    state = 0
    entry = 0
    for i in range(start, end):
        byte = data[i]
        entry = table[state << 4 | byte >> 4]
        if entry & _H_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if entry & _H_EMIT:
            out.append(entry & 0xFF)
        entry = table[(entry >> 16) << 4 | byte & 0x0F]
        if entry & _H_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        if entry & _H_EMIT:
            out.append(entry & 0xFF)
        state = entry >> 16
    if start < end and not entry & _H_COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """`data` Huffman-coded, padded with ones: hpack's HuffmanEncoder.encode, byte for byte."""
    codes = _H_CODES
    lengths = _H_LENGTHS
    out: list[int] = []
    bits = 0  # pending in `pending`'s low bits: fewer than 8 between bytes
    pending = 0
    for i in range(len(data)):
        byte = data[i]
        length = lengths[byte]
        pending = pending << length | codes[byte]
        bits += length
        while bits >= 8:
            bits -= 8
            out.append(pending >> bits & 0xFF)
        pending &= (1 << bits) - 1
    if bits:
        out.append((pending << (8 - bits) | 0xFF >> bits) & 0xFF)
    return bytes(out)


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
    if huffman:
        return huffman_decode(data, pos, end), end
    return data[pos:end], end


class FastDecoder(Decoder):
    def decode(self, data: bytes, raw: bool = False) -> list[Any]:  # type: ignore[override]
        """The block's fields (raw bytes only: `raw` is accepted for hpack's signature)."""
        if type(data) is not bytes:
            data = bytes(data)
        table = self.header_table
        dynamic = table.dynamic_entries
        limit: int = self.max_header_list_size
        max_table: int = self.max_allowed_table_size
        fields: list[Any] = []
        inflated = 0
        pos = 0
        size = len(data)
        name: bytes
        value: bytes
        while pos < size:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = _integer(data, pos, 0x7F)
                if 0 < index <= _STATIC_LENGTH:
                    name, value = _STATIC[index - 1]
                elif _STATIC_LENGTH < index <= _STATIC_LENGTH + len(dynamic):
                    name, value = dynamic[index - _STATIC_LENGTH - 1]
                else:
                    raise InvalidTableIndex(f"invalid table index {index}")
                fields.append((name, value))
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
                    fields.append((name, value))
                elif byte & 0x10:
                    fields.append(NeverIndexedHeaderTuple(name, value))
                else:
                    fields.append((name, value))
            else:  # a dynamic table size update: only before the first field
                if fields:
                    raise HPACKDecodingError("table size update not at the start of the block")
                new_size, pos = _integer(data, pos, 0x1F)
                if new_size > max_table:
                    raise InvalidTableSizeError("encoder exceeded the max allowable table size")
                table.maxsize = new_size
                continue
            inflated += 32 + len(name) + len(value)
            if inflated > limit:
                raise OversizedHeaderListError(f"a header list larger than {limit} has been received")
        if table.maxsize > max_table:
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
    def encode(self, headers: list[Any], huffman: bool = True) -> bytes:  # type: ignore[override]
        """A block for `headers` (bytes pairs; NeverIndexedHeaderTuple: never indexed)."""
        table = self.header_table
        out: list[bytes] = []
        if table.resized:
            out.append(self._encode_table_size_change())
            table.resized = False
        dynamic = table.dynamic_entries
        for field in headers:
            name: bytes = field[0]
            value: bytes = field[1]
            sensitive = isinstance(field, HeaderTuple) and not field.indexable
            static = _STATIC_MAP.get(name)
            if static is not None:
                index = static[1].get(value)
                if index is not None:
                    out.append(_INDEXED[index])
                    continue
            if dynamic:
                try:
                    index = dynamic.index((name, value)) + _STATIC_LENGTH + 1
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
                i = 0
                for entry in dynamic:
                    i += 1
                    if entry[0] == name:
                        name_index = i + _STATIC_LENGTH
                        break
            if huffman:
                value_code = huffman_encode(value)
                value_part = _integer_bytes(len(value_code), 0x80, 0x7F) + value_code
            else:
                value_part = _integer_bytes(len(value), 0, 0x7F) + value
            if name_index:
                if sensitive:
                    out.append(_integer_bytes(name_index, 0x10, 0x0F) + value_part)
                else:
                    out.append(_integer_bytes(name_index, 0x40, 0x3F) + value_part)
            else:
                if huffman:
                    name_code = huffman_encode(name)
                    name_part = _integer_bytes(len(name_code), 0x80, 0x7F) + name_code
                else:
                    name_part = _integer_bytes(len(name), 0, 0x7F) + name
                out.append((b"\x10" if sensitive else b"\x40") + name_part + value_part)
            if not sensitive:
                table.add(name, value)
        return b"".join(out)
