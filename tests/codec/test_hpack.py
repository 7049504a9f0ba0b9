"""The fast HPACK coders against hpack's own: same bytes, same fields, same tables, same refusals."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman

from proxy.codec._hpack import FastDecoder, FastEncoder, huffman_decode, huffman_encode

NAMES = [b":method", b":path", b":authority", b"cookie", b"user-agent", b"x-a", b"x-longer-custom-name", b"accept", b"content-length"]


def _field(rng: random.Random) -> tuple[bytes, bytes]:
    name = rng.choice(NAMES)
    value = bytes(rng.choice(b"abcXYZ019/-_ ;=%\x80\xff") for _ in range(rng.choice([0, 1, 5, 30, 200])))
    kind = rng.random()
    if kind < 0.15:
        return NeverIndexedHeaderTuple(name, value)
    return (name, value)


def _plain(fields: list) -> list:
    return [(bytes(n), bytes(v), isinstance(f, NeverIndexedHeaderTuple) or (isinstance(f, HeaderTuple) and not f.indexable)) for f in fields for n, v in [f]]


def test_same_fields_and_tables_as_hpack() -> None:
    rng = random.Random(3)
    encoder = hpack.Encoder()
    ours, theirs = FastDecoder(), hpack.Decoder()
    for block_no in range(400):
        if block_no % 97 == 50:
            size = rng.choice([0, 100, 4096, 2000])
            encoder.header_table_size = size
        fields = [_field(rng) for _ in range(rng.randint(0, 12))]
        block = encoder.encode(fields, huffman=rng.random() < 0.7)
        expected = theirs.decode(block, raw=True)
        got = ours.decode(block, raw=True)
        assert _plain(got) == _plain(expected)
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
        assert ours.header_table_size == theirs.header_table_size


def test_garbage_is_refused_as_hpack_refuses_it() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        block = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        try:
            expected = hpack.Decoder().decode(block, raw=True)
        except (HPACKDecodingError, IndexError, TypeError, UnicodeDecodeError):
            with pytest.raises(HPACKDecodingError):
                FastDecoder().decode(block, raw=True)
            continue
        assert _plain(FastDecoder().decode(block, raw=True)) == _plain(expected)


def test_limits() -> None:
    encoder = hpack.Encoder()
    decoder = FastDecoder()
    decoder.max_header_list_size = 1000
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(encoder.encode([(b"x", b"v" * 1000)]))
    decoder = FastDecoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(HPACKDecodingError):
        decoder.decode(b"\x3f\xe1\x1f")  # a size update to 4096 > 100
    with pytest.raises(HPACKDecodingError):
        FastDecoder().decode(b"\x82\x3f\xe1\x1f")  # a size update after a field
    with pytest.raises(HPACKDecodingError):
        FastDecoder().decode(b"\xff" + b"\xff" * 10)  # an endless integer
    with pytest.raises(HPACKDecodingError):
        FastDecoder().decode(b"\x80")  # index 0


def test_encoder_emits_hpacks_bytes() -> None:
    rng = random.Random(11)
    ours, theirs = FastEncoder(), hpack.Encoder()
    decoder = FastDecoder()
    for block_no in range(500):
        if block_no % 89 == 40:
            size = rng.choice([0, 64, 4096, 1500])
            ours.header_table_size = size
            theirs.header_table_size = size
        fields = [_field(rng) for _ in range(rng.randint(0, 12))]
        huffman = rng.random() < 0.8
        block = ours.encode(fields, huffman=huffman)
        assert block == theirs.encode(fields, huffman=huffman)
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
        # (A never-indexed field already in the table goes indexed, as hpack sends it.)
        assert [tuple(f) for f in decoder.decode(block)] == [tuple(f) for f in fields]


def test_huffman_coders_are_hpacks() -> None:
    """Our table-driven Huffman loops against hpack's: the same codes, the same strings back,
    the same refusals of garbage (a bad code, EOS, padding longer than 7 bits or not ones)."""
    rng = random.Random(13)
    theirs = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    for length in [0, 1, 2, 3, 7, 8, 31, 200] * 40:
        data = bytes(rng.randrange(256) if rng.random() < 0.3 else rng.choice(b"abc/=-_0129") for _ in range(length))
        code = huffman_encode(data)
        assert code == theirs.encode(data)
        assert huffman_decode(code, 0, len(code)) == data
        framed = b"xy" + code + b"z"
        assert huffman_decode(framed, 2, 2 + len(code)) == data  # a slice of a block, in place
    for _ in range(5000):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        try:
            expected = decode_huffman(garbage)
        except HPACKDecodingError as exc:
            with pytest.raises(HPACKDecodingError, match=str(exc)):
                huffman_decode(garbage, 0, len(garbage))
            continue
        assert huffman_decode(garbage, 0, len(garbage)) == expected
