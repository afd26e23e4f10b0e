"""HPACK (RFC 7541), the header compression of HTTP/2, over bytes: no sockets, no clocks.

Decoding covers all a client may send: indexed fields, literals with and without indexing,
dynamic table size updates with eviction, and Huffman-coded strings (gRPC clients Huffman-code
their values). Input that breaks the format or would decode to more than the header list limit
raises HPACKError; the connection answers it with GOAWAY COMPRESSION_ERROR, because a block
that was not decoded to its end leaves the dynamic table out of step with the client's.
Encoding is only what our replies need: literals without indexing, names from the static table
where one is there, no Huffman. Our replies therefore never touch the client's dynamic table.
"""

from typing import Dict, List, Optional, Sequence, Tuple

HeaderList = List[Tuple[bytes, bytes]]

DYNAMIC_TABLE_LIMIT = 4096  # SETTINGS_HEADER_TABLE_SIZE: the protocol default, not raised
HEADER_LIST_LIMIT = 16 * 1024  # decoded name + value + 32 per field (RFC 9113 §6.5.2), advertised
HEADER_FIELDS_LIMIT = 100  # fields in one header block, as for HTTP/1.1
HPACK_INTEGER_BYTES = 4  # continuation bytes of one integer: a value past 2^28 is refused
ENTRY_OVERHEAD = 32  # RFC 7541 §4.1: what each table entry costs beyond its name and value
HUFFMAN_CACHE_ENTRIES = 512  # decoded strings a server keeps (kubelets repeat theirs); then
HUFFMAN_CACHE_STRING = 64  # it starts over; only strings up to this many bytes coded are kept

# RFC 7541 Appendix A, index 1 to 61, "name" or "name=value", separated by "|".
STATIC_TABLE: Tuple[Tuple[bytes, bytes], ...] = tuple(
    (name.encode("ascii"), value.encode("ascii")) for name, _, value in (
        entry.partition("=") for entry in (
            ":authority|:method=GET|:method=POST|:path=/|:path=/index.html|:scheme=http|"
            ":scheme=https|:status=200|:status=204|:status=206|:status=304|:status=400|"
            ":status=404|:status=500|accept-charset|accept-encoding=gzip, deflate|"
            "accept-language|accept-ranges|accept|access-control-allow-origin|age|allow|"
            "authorization|cache-control|content-disposition|content-encoding|content-language|"
            "content-length|content-location|content-range|content-type|cookie|date|etag|expect|"
            "expires|from|host|if-match|if-modified-since|if-none-match|if-range|"
            "if-unmodified-since|last-modified|link|location|max-forwards|proxy-authenticate|"
            "proxy-authorization|range|referer|refresh|retry-after|server|set-cookie|"
            "strict-transport-security|transfer-encoding|user-agent|vary|via|www-authenticate"
        ).split("|")))
STATIC_NAME_INDEX = {name: i + 1 for i, (name, _) in reversed(list(enumerate(STATIC_TABLE)))}

# RFC 7541 Appendix B: the code length of symbols 0..256 (256 is EOS), each as chr(48 + bits).
# The code is canonical (codes in order of length, then symbol), so the lengths define it.
HUFFMAN_CODE_LENGTHS = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777777878"
    "=C=>6?56565666577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGFFHEFGGEEFEG"
    "FGGDFFFGFFGJJDCFGFIJJJKKJHICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN")
HUFFMAN_EOS = 256


class HPACKError(Exception):
    """A header block that cannot be decoded, or decodes past a limit (COMPRESSION_ERROR)."""


def _huffman_tables() -> Tuple[Tuple[int, ...], Tuple[Tuple[int, int, Tuple[int, ...]], ...]]:
    """(short, long): `short[byte]` is symbol << 4 | length for codes of up to 8 bits that the
    byte starts with, else -1; `long` is (length, first code, symbols) for each longer length."""
    lengths = [ord(c) - 48 for c in HUFFMAN_CODE_LENGTHS]
    order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    short = [-1] * 256
    long_rows = []
    code, prev = -1, lengths[order[0]]
    first: Dict[int, int] = {}
    by_length: Dict[int, List[int]] = {}
    for sym in order:
        bits = lengths[sym]
        code = (code + 1) << (bits - prev)
        prev = bits
        first.setdefault(bits, code)
        by_length.setdefault(bits, []).append(sym)
        if bits <= 8:
            base = code << (8 - bits)
            for low in range(1 << (8 - bits)):
                short[base + low] = sym << 4 | bits
    for bits in sorted(b for b in by_length if b > 8):
        long_rows.append((bits, first[bits], tuple(by_length[bits])))
    return tuple(short), tuple(long_rows)


HUFFMAN_SHORT, HUFFMAN_LONG = _huffman_tables()


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string; padding must be under 8 bits, all ones, and EOS absent."""
    value = int.from_bytes(data, "big")
    left = len(data) * 8  # bits not decoded yet
    out = bytearray()
    short, long_rows = HUFFMAN_SHORT, HUFFMAN_LONG
    while left:
        if left < 8 and value & ((1 << left) - 1) == (1 << left) - 1:
            break  # the padding: a prefix of EOS, all ones
        if left >= 8:
            entry = short[(value >> (left - 8)) & 0xFF]
        else:
            entry = short[((value << (8 - left)) | ((1 << (8 - left)) - 1)) & 0xFF]
        if entry >= 0:
            bits, sym = entry & 15, entry >> 4
        else:
            window = (value >> (left - 30) if left >= 30 else
                      (value << (30 - left)) | ((1 << (30 - left)) - 1)) & 0x3FFFFFFF
            sym = HUFFMAN_EOS
            for bits, first, syms in long_rows:
                index = (window >> (30 - bits)) - first
                if 0 <= index < len(syms):
                    sym = syms[index]
                    break
        if bits > left:
            raise HPACKError("Huffman padding longer than 7 bits or not all ones")
        if sym == HUFFMAN_EOS:
            raise HPACKError("Huffman string contains EOS")
        out.append(sym)
        left -= bits
    return bytes(out)


def decode_integer(block: bytes, pos: int, prefix_bits: int) -> Tuple[int, int]:
    """An HPACK integer whose prefix is the low `prefix_bits` of block[pos]: (value, next pos)."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    for shift in range(0, 7 * HPACK_INTEGER_BYTES, 7):
        if pos >= len(block):
            raise HPACKError("header block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise HPACKError("integer longer than %d bytes" % (HPACK_INTEGER_BYTES + 1))


class HPACKDecoder:
    """One connection's decoder: its dynamic table lives as long as the connection.
    `cache` (Huffman-coded -> decoded strings) may be shared by a server's connections."""

    __slots__ = ("table", "size", "max_size", "list_limit", "cache")

    def __init__(self, max_size: int = DYNAMIC_TABLE_LIMIT, list_limit: int = HEADER_LIST_LIMIT,
                 cache: Optional[Dict[bytes, bytes]] = None) -> None:
        self.table: List[Tuple[bytes, bytes]] = []  # newest first: index 62 is table[0]
        self.size = 0
        self.max_size = max_size  # the client's current choice, at most the setting
        self.list_limit = list_limit
        self.cache: Dict[bytes, bytes] = {} if cache is None else cache

    def decode(self, block: bytes) -> HeaderList:
        """Decode one complete header block into (name, value) pairs, in order."""
        fields: HeaderList = []
        total, pos, end = 0, 0, len(block)
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = decode_integer(block, pos, 7)
                name, value = self._entry(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                if fields:
                    raise HPACKError("table size update after the first field")
                size, pos = decode_integer(block, pos, 5)
                if size > DYNAMIC_TABLE_LIMIT:
                    raise HPACKError("table size %d over the %d allowed" % (
                        size, DYNAMIC_TABLE_LIMIT))
                self.max_size = size
                self._evict(size)
                continue
            else:  # literal: with incremental indexing (01), without (0000) or never (0001)
                indexing = byte & 0x40
                index, pos = decode_integer(block, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(block, pos)
                value, pos = self._string(block, pos)
                if indexing:
                    self._add(name, value)
            total += len(name) + len(value) + ENTRY_OVERHEAD
            if total > self.list_limit:
                raise HPACKError("header list over %d bytes" % self.list_limit)
            if len(fields) == HEADER_FIELDS_LIMIT:
                raise HPACKError("more than %d header fields" % HEADER_FIELDS_LIMIT)
            fields.append((name, value))
        return fields

    def _entry(self, index: int) -> Tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        if 61 < index <= 61 + len(self.table):
            return self.table[index - 62]
        raise HPACKError("no table entry %d" % index)

    def _string(self, block: bytes, pos: int) -> Tuple[bytes, int]:
        if pos >= len(block):
            raise HPACKError("header block ends before a string")
        huffman = block[pos] & 0x80
        length, pos = decode_integer(block, pos, 7)
        if length > self.list_limit:  # the block is bounded; this stops a lie in the length
            raise HPACKError("string of %d bytes" % length)
        end = pos + length
        if end > len(block):
            raise HPACKError("header block ends inside a string")
        raw = block[pos:end]
        if not huffman:
            return raw, end
        text = self.cache.get(raw)
        if text is None:  # a kubelet's path, authority and user agent are the same each time
            text = huffman_decode(raw)
            if len(raw) <= HUFFMAN_CACHE_STRING:
                if len(self.cache) >= HUFFMAN_CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[raw] = text
        return text, end

    def _add(self, name: bytes, value: bytes) -> None:
        cost = len(name) + len(value) + ENTRY_OVERHEAD
        if cost > self.max_size:  # RFC 7541 §4.4: an entry too big empties the table
            self.table.clear()
            self.size = 0
            return
        self._evict(self.max_size - cost)
        self.table.insert(0, (name, value))
        self.size += cost

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until the table holds at most `room` bytes."""
        table = self.table
        while self.size > room:
            name, value = table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD


def encode_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """An HPACK integer with `flags` in the bits above the prefix of its first byte."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(fields: Sequence[Tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing (name from the static table if there)."""
    out = []
    for name, value in fields:
        index = STATIC_NAME_INDEX.get(name, 0)
        out.append(encode_integer(index, 4, 0))
        if not index:
            out.append(encode_integer(len(name), 7, 0) + name)
        out.append(encode_integer(len(value), 7, 0) + value)
    return b"".join(out)


def encode_table_size_update(size: int) -> bytes:
    """The instruction that tells the client our (empty) table's new maximum size."""
    return encode_integer(size, 5, 0x20)
