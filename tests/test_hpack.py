"""HPACK decoding and encoding against RFC 7541's own examples (Appendix C), and its limits:
malformed input and HPACK bombs raise HPACKError instead of growing memory."""

from typing import Dict, List, Tuple

import pytest

from probed.hpack import (
    DYNAMIC_TABLE_LIMIT,
    HEADER_FIELDS_LIMIT,
    HEADER_LIST_LIMIT,
    HUFFMAN_CODE_LENGTHS,
    HPACKDecoder,
    HPACKError,
    decode_integer,
    encode_headers,
    encode_integer,
    encode_table_size_update,
    huffman_decode,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def pairs(*items: str) -> List[Tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in (item.split(": ", 1) for item in items)]


# --- C.1 integers --------------------------------------------------------------------------------

@pytest.mark.parametrize("value,prefix,wire", [
    (10, 5, b"\x0a"),  # C.1.1
    (1337, 5, b"\x1f\x9a\x0a"),  # C.1.2
    (42, 8, b"\x2a"),  # C.1.3
])
def test_rfc_integer_examples(value: int, prefix: int, wire: bytes) -> None:
    assert encode_integer(value, prefix, 0) == wire
    assert decode_integer(wire, 0, prefix) == (value, len(wire))


def test_integer_flag_bits_above_the_prefix_are_ignored() -> None:
    assert decode_integer(b"\xff\x9a\x0a", 0, 5) == (1337, 3)


def test_an_endless_integer_is_refused() -> None:
    with pytest.raises(HPACKError, match="integer longer"):
        decode_integer(b"\x7f" + b"\xff" * 20, 0, 7)
    with pytest.raises(HPACKError, match="ends inside an integer"):
        decode_integer(b"\x1f\x9a", 0, 5)


# --- C.2 single fields ---------------------------------------------------------------------------

@pytest.mark.parametrize("wire,fields,table", [
    ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     pairs("custom-key: custom-header"), pairs("custom-key: custom-header")),  # C.2.1
    ("040c 2f73 616d 706c 652f 7061 7468", pairs(":path: /sample/path"), []),  # C.2.2
    ("1008 7061 7373 776f 7264 0673 6563 7265 74", pairs("password: secret"), []),  # C.2.3
    ("82", pairs(":method: GET"), []),  # C.2.4
])
def test_rfc_single_field_examples(wire: str, fields: list, table: list) -> None:
    decoder = HPACKDecoder()
    assert decoder.decode(unhex(wire)) == fields
    assert decoder.table == table


# --- C.3 to C.6: sequences sharing one dynamic table -------------------------------------------

REQUESTS = [
    (pairs(":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com"),
     pairs(":authority: www.example.com"), 57),
    (pairs(":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com",
           "cache-control: no-cache"),
     pairs("cache-control: no-cache", ":authority: www.example.com"), 110),
    (pairs(":method: GET", ":scheme: https", ":path: /index.html",
           ":authority: www.example.com", "custom-key: custom-value"),
     pairs("custom-key: custom-value", "cache-control: no-cache", ":authority: www.example.com"),
     164),
]
RESPONSES = [
    (pairs(":status: 302", "cache-control: private", "date: Mon, 21 Oct 2013 20:13:21 GMT",
           "location: https://www.example.com"),
     pairs("location: https://www.example.com", "date: Mon, 21 Oct 2013 20:13:21 GMT",
           "cache-control: private", ":status: 302"), 222),
    (pairs(":status: 307", "cache-control: private", "date: Mon, 21 Oct 2013 20:13:21 GMT",
           "location: https://www.example.com"),
     pairs(":status: 307", "location: https://www.example.com",
           "date: Mon, 21 Oct 2013 20:13:21 GMT", "cache-control: private"), 222),
    (pairs(":status: 200", "cache-control: private", "date: Mon, 21 Oct 2013 20:13:22 GMT",
           "location: https://www.example.com", "content-encoding: gzip",
           "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
     pairs("set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
           "content-encoding: gzip", "date: Mon, 21 Oct 2013 20:13:22 GMT"), 215),
]
SEQUENCES: Dict[str, Tuple[int, list, List[str]]] = {
    "C.3 requests": (4096, REQUESTS, [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]),
    "C.4 requests, Huffman": (4096, REQUESTS, [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]),
    "C.5 responses, evicting": (256, RESPONSES, [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
        "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
        "6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
        "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
        "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
        "3d31"]),
    "C.6 responses, Huffman, evicting": (256, RESPONSES, [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
        "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
        "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
        "9587 3160 65c0 03ed 4ee5 b106 3d50 07"]),
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_rfc_sequences_keep_the_dynamic_table_in_step(name: str) -> None:
    table_size, steps, wires = SEQUENCES[name]
    decoder = HPACKDecoder(max_size=table_size)
    for wire, (fields, table, size) in zip(wires, steps):
        assert decoder.decode(unhex(wire)) == fields
        assert decoder.table == table
        assert decoder.size == size


# --- Huffman -------------------------------------------------------------------------------------

def canonical_codes() -> Dict[int, Tuple[int, int]]:
    """symbol -> (code, bits), rebuilt the way RFC 7541 Appendix B lists them."""
    lengths = [ord(c) - 48 for c in HUFFMAN_CODE_LENGTHS]
    code, prev, codes = -1, 5, {}
    for sym in sorted(range(257), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[sym] - prev)
        prev = lengths[sym]
        codes[sym] = (code, lengths[sym])
    return codes


def huffman_encode(data: bytes) -> bytes:
    value, bits = 0, 0
    codes = canonical_codes()
    for byte in data:
        code, length = codes[byte]
        value, bits = (value << length) | code, bits + length
    pad = -bits % 8
    return ((value << pad) | ((1 << pad) - 1)).to_bytes((bits + pad) // 8, "big")


def test_the_huffman_table_is_rfc_7541_appendix_b() -> None:
    codes = canonical_codes()
    # Rows of Appendix B, read off the RFC: (symbol, code as hex, bits)
    for sym, code, bits in [(0, 0x1FF8, 13), (ord(" "), 0x14, 6), (ord("!"), 0x3F8, 10),
                            (ord("0"), 0x0, 5), (ord("A"), 0x21, 6), (ord("a"), 0x3, 5),
                            (ord("z"), 0x7B, 7), (127, 0xFFFFFFC, 28), (255, 0x3FFFFEE, 26),
                            (256, 0x3FFFFFFF, 30)]:
        assert codes[sym] == (code, bits), sym
    assert len({c for c, _ in codes.values()}) == 257


def test_every_byte_value_round_trips_through_huffman() -> None:
    data = bytes(range(256)) * 2
    assert huffman_decode(huffman_encode(data)) == data
    assert huffman_decode(b"") == b""


@pytest.mark.parametrize("bad", [
    b"\xff",  # 8 bits of padding
    b"\x1f\xff",  # "a" and 11 bits of padding
    b"\xff\x9f\xff\xff\xff",  # "a" and 29 bits of padding
    b"\x00",  # "0" and padding of zeros
    b"\xff\xff\xff\xff\xfc",  # EOS, then "?"
    b"00\x91\xff\xff\xff\xff\xc8",  # a fuzzer's find: EOS inside
])
def test_bad_huffman_is_refused(bad: bytes) -> None:
    with pytest.raises(HPACKError):
        huffman_decode(bad)


# --- limits and malformed blocks ---------------------------------------------------------------

def literal(name: bytes, value: bytes, indexing: bool = True) -> bytes:
    return (b"\x40" if indexing else b"\x00") + encode_integer(len(name), 7, 0) + name + \
        encode_integer(len(value), 7, 0) + value


def test_an_hpack_bomb_is_refused_at_the_header_list_limit() -> None:
    # One 4000-byte entry, then 1-byte references to it: 16 of them pass 64 KB decoded.
    block = literal(b"x", b"y" * 4000) + b"\xbe" * 10000
    with pytest.raises(HPACKError, match="header list over %d" % HEADER_LIST_LIMIT):
        HPACKDecoder().decode(block)


def test_many_small_fields_are_refused() -> None:
    with pytest.raises(HPACKError, match="more than %d header fields" % HEADER_FIELDS_LIMIT):
        HPACKDecoder().decode(b"\x82" * (HEADER_FIELDS_LIMIT + 1))
    assert len(HPACKDecoder().decode(b"\x82" * HEADER_FIELDS_LIMIT)) == HEADER_FIELDS_LIMIT


def test_table_size_updates_evict_and_are_bounded() -> None:
    decoder = HPACKDecoder()
    decoder.decode(literal(b"a", b"1") + literal(b"b", b"2"))
    assert decoder.table == [(b"b", b"2"), (b"a", b"1")] and decoder.size == 68
    assert decoder.decode(b"\x3f\x03" + b"\xbe") == [(b"b", b"2")]  # to 34: "a" evicted
    assert decoder.table == [(b"b", b"2")]
    decoder.decode(encode_table_size_update(0))
    assert decoder.table == [] and decoder.size == 0
    with pytest.raises(HPACKError, match="table size"):
        HPACKDecoder().decode(encode_table_size_update(DYNAMIC_TABLE_LIMIT + 1))
    with pytest.raises(HPACKError, match="after the first field"):
        HPACKDecoder().decode(b"\x82" + encode_table_size_update(0))


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = HPACKDecoder(max_size=100)
    decoder.decode(literal(b"a", b"1"))
    assert decoder.decode(literal(b"big", b"v" * 100)) == [(b"big", b"v" * 100)]
    assert decoder.table == [] and decoder.size == 0


@pytest.mark.parametrize("block,why", [
    (b"\x80", "no table entry 0"),
    (b"\xbe", "no table entry 62"),  # the dynamic table is empty
    (b"\x00\x05ab", "inside a string"),
    (b"\x00", "before a string"),
    (b"\x00\x7f\xff\xff\x7f", "string of"),
])
def test_malformed_blocks_are_refused(block: bytes, why: str) -> None:
    with pytest.raises(HPACKError, match=why):
        HPACKDecoder().decode(block)


def test_our_encoding_is_literal_without_indexing_and_decodes_back() -> None:
    fields = [(b":status", b"200"), (b"content-type", b"application/grpc"),
              (b"grpc-status", b"0")]
    block = encode_headers(fields)
    assert block.startswith(b"\x08\x03200\x0f\x10\x10application/grpc\x00\x0bgrpc-status")
    decoder = HPACKDecoder()
    assert decoder.decode(block) == fields
    assert decoder.table == []  # nothing indexed: the client's table is left alone
    assert encode_table_size_update(0) == b"\x20"


def test_the_shared_huffman_cache_is_used_and_bounded() -> None:
    from probed.hpack import HUFFMAN_CACHE_ENTRIES, HUFFMAN_CACHE_STRING

    def huffman_literal(value: bytes) -> bytes:
        coded = huffman_encode(value)
        return b"\x04" + encode_integer(len(coded), 7, 0x80) + coded  # :path, not indexed

    cache: Dict[bytes, bytes] = {}
    block = huffman_literal(b"/grpc.health.v1.Health/Check")
    assert HPACKDecoder(cache=cache).decode(block) == [(b":path", b"/grpc.health.v1.Health/Check")]
    coded = huffman_encode(b"/grpc.health.v1.Health/Check")
    assert cache == {coded: b"/grpc.health.v1.Health/Check"}
    cache[coded] = b"/from-the-cache"  # a second connection's decoder reads it from there
    assert HPACKDecoder(cache=cache).decode(block) == [(b":path", b"/from-the-cache")]
    long_value = b"x" * (HUFFMAN_CACHE_STRING * 2)
    HPACKDecoder(cache=cache).decode(huffman_literal(long_value))
    assert all(v != long_value for v in cache.values())  # long strings are not kept
    for n in range(HUFFMAN_CACHE_ENTRIES + 10):
        HPACKDecoder(cache=cache).decode(huffman_literal(b"/%d" % n))
        assert len(cache) <= HUFFMAN_CACHE_ENTRIES
