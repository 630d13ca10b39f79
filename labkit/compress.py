"""Lossless coders written out: entropy, Huffman codes and LZ77, next to the standard library's zlib / lzma / bz2.

Two ideas make almost every lossless compressor, and this module writes each one out in plain Python:

1. Give frequent symbols short codes (ENTROPY CODING). Shannon's "A Mathematical Theory of Communication" (1948)
   shows no code can average fewer than H = -sum p·log2 p bits per symbol (`entropy_bits`). Huffman's "A Method
   for the Construction of Minimum-Redundancy Codes" (1952) builds the best prefix code with whole-bit lengths,
   whose average length L satisfies H <= L < H + 1:

       frequencies --heap merge--> code lengths --canonical--> codes --BitWriter--> packed bits --decode--> symbols
       {a:5, b:2, c:1, d:1}        {a:1, b:2, c:3, d:3}         a=0 b=10 c=110 d=111

   Only the LENGTHS need storing: the canonical assignment (`canonical_codes`) rebuilds the codes from them, which
   is why DEFLATE (zlib, gzip, PNG) sends a table of lengths, one small number per alphabet entry (`table_bytes`).

2. Say "the same as N bytes ago" instead of repeating yourself (DICTIONARY CODING). Ziv and Lempel's "A Universal
   Algorithm for Sequential Data Compression" (1977) replaces a repeat by a (offset, length) pair pointing back into
   a sliding window of recent bytes, its tokens (offset, length, next byte) triples; `lz77_tokens` emits a literal
   or a match instead, Storer and Szymanski's variant ("Data Compression via Textual Substitution", 1982, LZSS),
   as DEFLATE does. Finding a long earlier match is the slow part; a HASH CHAIN (the trick zlib uses) only looks at
   earlier positions that start with the same `min_match` bytes, and at most `max_chain` of them (zlib caps its
   chain too), so the match found is the longest among those candidates.

zlib's DEFLATE is exactly 1 then 2 combined (LZ77 tokens, then Huffman codes for them); lzma and bz2 model the data
more cleverly still. `compare_coders` runs all of them on the same bytes: the library coders are the reference,
the hand-written ones teach. Every stream this module writes is self-contained (a header with a magic number and a
CRC-32 of the original data), and every decoder rejects a truncated or damaged stream with `CorruptStream` instead
of looping forever or returning wrong data.

The streams, byte by byte (integers little-endian; bits packed most significant bit first, the first bit written
being the top bit of the first byte, and the last byte padded with zero bits):

    huffman_encode   "LKHF" | n_symbols u32 | alphabet_size u32 | table entries T u32 | CRC-32 u32
                     | T code lengths, one byte each (0 = symbol unused) | the packed codes
    lz77_compress    "LKZ7" | mode u8 (0 stored, 1 tokens) | window u32 | max_length u16 | min_match u8
                     | n_bytes u32 | CRC-32 u32 | the raw bytes (stored) or the packed tokens:
                     literal = bit 0 + 8 bits; match = bit 1 + (offset - 1) + (length - min_match), in just enough
                     bits for `window` and `max_length`

The CRC-32 (zlib.crc32: a checksum, not a coder) covers the header and the decoded data, so damage that still
decodes to something is caught too. `huffman_decode` gives bytes back when alphabet_size <= 256, else a list of ints.
"""
from __future__ import annotations

import bz2
import heapq
import lzma
import math
import numbers
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterable

__all__ = [
    "CorruptStream", "BitWriter", "BitReader", "entropy_bits", "huffman_code_lengths", "canonical_codes",
    "HuffmanCode", "huffman_encode", "huffman_decode", "lz77_tokens", "lz77_detokenize", "lz77_compress",
    "lz77_decompress", "compare_coders", "HUFFMAN_MAGIC", "LZ77_MAGIC", "MAX_ALPHABET", "LZ77_LIMITS",
]


class CorruptStream(ValueError):
    """A compressed stream that cannot be decoded: wrong magic, truncated, damaged, or failing its checksum."""


# ---------------------------------------------------------------------------------------------
# Checking arguments
# ---------------------------------------------------------------------------------------------

def _check_int(value, name: str, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; TypeError/ValueError naming `name` and the allowed range."""
    allowed = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be {allowed}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value!r} is out of range: must be {allowed}")
    return int(value)


def _as_symbols(symbols, name: str = "symbols") -> list[int]:
    """bytes, a sequence of non-negative ints, or a 1-D integer tensor/array, as a list of Python ints."""
    if isinstance(symbols, (bytes, bytearray, memoryview)):
        return list(bytes(symbols))
    if isinstance(symbols, str):
        raise TypeError(f"{name} is a str; encode it first (e.g. text.encode('utf-8')) or pass a list of ints")
    if hasattr(symbols, "dim") or hasattr(symbols, "ndim"):  # a torch tensor or a numpy array
        ndim = symbols.dim() if hasattr(symbols, "dim") else symbols.ndim
        if ndim != 1:
            raise ValueError(f"{name} must be 1-D; got shape {tuple(symbols.shape)}")
        dtype = str(symbols.dtype)
        if "int" not in dtype:
            raise TypeError(f"{name} must hold integers; got dtype {dtype}")
        negative = (symbols < 0).nonzero()
        negative = negative[0] if isinstance(negative, tuple) else negative.flatten()  # numpy gives a tuple
        if len(negative):
            i = int(negative[0])
            raise ValueError(f"{name}[{i}]={int(symbols[i])}: symbols must be non-negative integers")
        return symbols.tolist()  # checked all at once: the loop below costs ~0.2 s per million symbols
    try:
        out = list(symbols)
    except TypeError:
        raise TypeError(f"{name} must be bytes, a sequence of ints or a 1-D integer tensor; "
                        f"got {type(symbols).__name__}") from None
    for i, s in enumerate(out):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{name}[{i}]={s!r} is not an integer symbol")
        if s < 0:
            raise ValueError(f"{name}[{i}]={s!r}: symbols must be non-negative integers")
    return [int(s) for s in out]


def _as_bytes(data, name: str = "data") -> bytes:
    """bytes-like `data` as bytes; TypeError naming `name` otherwise."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name} must be bytes (or bytearray/memoryview); got {type(data).__name__}")


def _check_frequencies(frequencies) -> dict[int, int]:
    """A {symbol: count} dict with non-negative int symbols and counts; ValueError naming the bad symbol."""
    if not isinstance(frequencies, dict):  # Counter is a dict
        raise TypeError(f"frequencies must be a dict {{symbol: count}}; got {type(frequencies).__name__}")
    for symbol, count in frequencies.items():
        if isinstance(symbol, bool) or not isinstance(symbol, numbers.Integral) or symbol < 0:
            raise ValueError(f"frequencies: symbol {symbol!r} must be a non-negative integer")
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise ValueError(f"frequencies[{symbol!r}]={count!r} must be a non-negative integer count")
        if count < 0:
            raise ValueError(f"frequencies[{symbol!r}]={count!r} is negative; counts must be >= 0")
    return {int(s): int(c) for s, c in frequencies.items()}


# ---------------------------------------------------------------------------------------------
# Entropy: the lower bound on bits per symbol
# ---------------------------------------------------------------------------------------------

def entropy_bits(symbols_or_counts) -> float:
    """Shannon entropy in bits/symbol of bytes, a sequence or 1-D integer tensor of symbols, or {symbol: count}."""
    if isinstance(symbols_or_counts, dict):
        counts = [c for c in _check_frequencies(symbols_or_counts).values() if c > 0]
        if not counts:
            raise ValueError("entropy_bits: the counts are empty (or all zero); entropy needs at least one symbol")
    else:
        symbols = _as_symbols(symbols_or_counts, "symbols_or_counts")
        if not symbols:
            raise ValueError("entropy_bits: empty input; entropy needs at least one symbol")
        counts = list(Counter(symbols).values())
    total = sum(counts)
    # H = -sum p log2 p: a symbol seen with probability p carries log2(1/p) bits of surprise. One symbol: 0 bits.
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts))


# ---------------------------------------------------------------------------------------------
# Huffman code lengths: merge the two rarest subtrees, again and again
# ---------------------------------------------------------------------------------------------

def huffman_code_lengths(frequencies: dict[int, int]) -> dict[int, int]:
    """An optimal prefix code's length in bits for each symbol with frequency > 0 (one symbol -> 1 bit; {} -> {})."""
    freqs = {s: c for s, c in _check_frequencies(frequencies).items() if c > 0}
    if not freqs:
        return {}
    if len(freqs) == 1:  # a code needs at least one bit to say "here is a symbol", even if there is only one kind
        return {next(iter(freqs)): 1}
    # Every node of the tree is a number: the leaves 0..n-1 are the symbols in sorted order, and each merge appends
    # a new internal node. The heap holds (weight, smallest symbol in the subtree, node). The smallest symbol breaks
    # ties between equal weights the same way on every machine; it is unique (subtrees are disjoint), so the
    # comparison never falls through to `node`.
    symbols = sorted(freqs)
    heap = [(freqs[s], s, node) for node, s in enumerate(symbols)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * len(symbols)
    while len(heap) > 1:
        # Huffman's insight: the two rarest subtrees can be siblings in an optimal code, so merge them; each merge
        # puts every symbol below it one bit deeper, and rare symbols are merged (made deeper) most often.
        w1, s1, a = heapq.heappop(heap)
        w2, s2, b = heapq.heappop(heap)
        merged = len(parent)
        parent.append(-1)
        parent[a] = parent[b] = merged
        heapq.heappush(heap, (w1 + w2, min(s1, s2), merged))
    # A node's depth is its parent's depth + 1. Parents are created after their children, so walking the nodes from
    # the last (the root, depth 0) down fills every depth in one pass.
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return {s: depth[node] for node, s in enumerate(symbols)}


def _check_lengths(lengths) -> dict[int, int]:
    """A {symbol: length} dict with non-negative int symbols and positive int lengths."""
    if not isinstance(lengths, dict):
        raise TypeError(f"lengths must be a dict {{symbol: length in bits}}; got {type(lengths).__name__}")
    for symbol, length in lengths.items():
        if isinstance(symbol, bool) or not isinstance(symbol, numbers.Integral) or symbol < 0:
            raise ValueError(f"lengths: symbol {symbol!r} must be a non-negative integer")
        if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
            raise ValueError(f"lengths[{symbol!r}]={length!r} must be a positive integer number of bits")
    return {int(s): int(n) for s, n in lengths.items()}


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """The canonical prefix code for the given lengths: symbol -> (code as an int, length in bits)."""
    lengths = _check_lengths(lengths)
    # Sort by (length, symbol) and count up: each code is the previous one + 1, shifted left by one bit whenever the
    # length grows. Shorter codes come first, so no code is the start of a later, longer one (a prefix code), and the
    # decoder can rebuild exactly these codes from the lengths alone.
    codes: dict[int, tuple[int, int]] = {}
    code, previous_length = 0, 0
    for symbol in sorted(lengths, key=lambda s: (lengths[s], s)):
        length = lengths[symbol]
        code <<= length - previous_length
        if code >> length:  # ran out of codes of this length: sum 2**-length > 1 (Kraft's inequality fails)
            kraft = sum(2.0 ** -n for n in lengths.values())
            raise ValueError(f"lengths={lengths!r} cannot form a prefix code: Kraft sum {kraft:g} > 1")
        codes[symbol] = (code, length)
        code, previous_length = code + 1, length
    return codes


# ---------------------------------------------------------------------------------------------
# Bits in, bits out
# ---------------------------------------------------------------------------------------------

class BitWriter:
    """Packs codes of any bit length into bytes, most significant bit first."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._pending = 0  # bits not yet making a whole byte, as an int ...
        self._n_pending = 0  # ... and how many of them (< 64 between calls)
        self.n_bits = 0  # bits written so far

    def write(self, value: int, n_bits: int) -> None:
        """Append the low `n_bits` bits of `value`, top bit first."""
        self._pending = (self._pending << n_bits) | value
        self._n_pending += n_bits
        self.n_bits += n_bits
        if self._n_pending >= 64:  # flush the whole bytes, oldest (highest) bits first, a batch at a time
            n_bytes = self._n_pending // 8
            self._n_pending -= 8 * n_bytes
            self._out += (self._pending >> self._n_pending).to_bytes(n_bytes, "big")
            self._pending &= (1 << self._n_pending) - 1

    def getvalue(self) -> bytes:
        """The bytes written so far, the last one padded with zero bits."""
        padding = -self._n_pending % 8
        tail = (self._pending << padding).to_bytes((self._n_pending + padding) // 8, "big")
        return bytes(self._out) + tail


class BitReader:
    """Reads bits back from bytes, most significant bit first; CorruptStream when they run out."""

    def __init__(self, data: bytes, n_bits: int | None = None) -> None:
        self._data = data
        self.n_bits = 8 * len(data) if n_bits is None else n_bits  # readable bits (the rest is padding)
        self.position = 0  # bits read so far

    def read_bit(self) -> int:
        """The next bit (0 or 1)."""
        if self.position >= self.n_bits:
            raise CorruptStream(f"the bit stream ended after {self.n_bits} bits (truncated?)")
        byte = self._data[self.position >> 3]
        bit = (byte >> (7 - (self.position & 7))) & 1
        self.position += 1
        return bit

    def read(self, n_bits: int) -> int:
        """The next `n_bits` bits as an unsigned int (first bit highest)."""
        if self.position + n_bits > self.n_bits:
            raise CorruptStream(f"the bit stream ended: needed {n_bits} bits at bit {self.position}, "
                                f"only {self.n_bits} bits in all (truncated?)")
        value = 0
        for _ in range(n_bits):
            value = (value << 1) | self.read_bit()
        return value


# ---------------------------------------------------------------------------------------------
# A Huffman code: lengths -> canonical codes -> encode and decode
# ---------------------------------------------------------------------------------------------

class HuffmanCode:
    """A canonical prefix code: `.lengths` (symbol -> bits) and `.codes` (symbol -> (code, bits))."""

    def __init__(self, lengths: dict[int, int]):
        self.codes = canonical_codes(lengths)
        self.lengths = {s: n for s, (_, n) in self.codes.items()}
        # The decoder's table: (length, code) -> symbol. Reading one bit at a time and looking the bits so far up
        # at each length finds the symbol at the first match; a prefix code guarantees no shorter code matched before.
        self._decode_table = {(n, code): s for s, (code, n) in self.codes.items()}
        self.max_length = max(self.lengths.values(), default=0)

    @classmethod
    def from_frequencies(cls, frequencies: dict[int, int]) -> "HuffmanCode":
        """The Huffman code for {symbol: count}."""
        return cls(huffman_code_lengths(frequencies))

    @classmethod
    def from_symbols(cls, symbols) -> "HuffmanCode":
        """The Huffman code for the symbols' own frequencies (bytes, a sequence of ints or a 1-D integer tensor)."""
        return cls.from_frequencies(dict(Counter(_as_symbols(symbols))))

    def encode(self, symbols) -> tuple[bytes, int]:
        """(the packed bit stream, MSB first and zero-padded, number of bits) of the symbols."""
        writer = BitWriter()
        codes = self.codes
        for i, s in enumerate(_as_symbols(symbols)):
            if s not in codes:
                raise ValueError(f"symbols[{i}]={s} has no code (the code covers {len(codes)} symbols)")
            code, n_bits = codes[s]
            writer.write(code, n_bits)
        return writer.getvalue(), writer.n_bits

    def decode(self, data: bytes, n_symbols: int) -> list[int]:
        """The first `n_symbols` symbols of a bit stream made by `.encode`; CorruptStream if it ends or has no code."""
        n_symbols = _check_int(n_symbols, "n_symbols", 0)
        reader = BitReader(_as_bytes(data))
        return self._decode(reader, n_symbols)

    def _decode(self, reader: BitReader, n_symbols: int) -> list[int]:
        table, max_length = self._decode_table, self.max_length
        if n_symbols and not table:
            raise CorruptStream(f"cannot decode {n_symbols} symbols with an empty code")
        out = []
        for _ in range(n_symbols):
            code, length = 0, 0
            while True:  # walk the lengths: one more bit, then is (length, code) a codeword?
                code = (code << 1) | reader.read_bit()
                length += 1
                if (length, code) in table:
                    out.append(table[length, code])
                    break
                if length >= max_length:  # only possible when the code is incomplete (e.g. one symbol, code "0")
                    raise CorruptStream(f"bits {code:0{length}b} at bit {reader.position - length} match no code")
        return out

    def average_length(self, frequencies: dict[int, int]) -> float:
        """The mean code length in bits/symbol over {symbol: count} (each symbol weighted by its count)."""
        freqs = {s: c for s, c in _check_frequencies(frequencies).items() if c > 0}
        if not freqs:
            raise ValueError("average_length: the frequencies are empty (or all zero)")
        missing = [s for s in freqs if s not in self.lengths]
        if missing:
            raise ValueError(f"average_length: symbols {missing[:5]} have a count but no code")
        return sum(c * self.lengths[s] for s, c in freqs.items()) / sum(freqs.values())

    @property
    def table_bytes(self) -> int:
        """Bytes of the stored code table: one length byte per alphabet entry 0..max symbol (0 = unused)."""
        return max(self.lengths) + 1 if self.lengths else 0

    def encoded_bytes(self, symbols, include_table: bool = True) -> int:
        """Bytes the symbols take coded: the packed bits in whole bytes, plus the length table unless told not to."""
        _, n_bits = self.encode(symbols)
        return (n_bits + 7) // 8 + (self.table_bytes if include_table else 0)

    def __repr__(self) -> str:
        return f"HuffmanCode({len(self.lengths)} symbols, max length {self.max_length} bits)"


# ---------------------------------------------------------------------------------------------
# A self-contained Huffman stream: header, length table, payload
# ---------------------------------------------------------------------------------------------

HUFFMAN_MAGIC = b"LKHF"
MAX_ALPHABET = 1 << 16
# magic, n_symbols, alphabet_size, table entries, CRC-32 (little-endian unsigned 32-bit fields)
_HUFFMAN_HEADER = struct.Struct("<4sIIII")


def _symbols_crc(header_fields: bytes, table: bytes, symbols: list[int]) -> int:
    """CRC-32 of the header fields, the length table and the symbols (as 4-byte little-endian ints)."""
    crc = zlib.crc32(header_fields + table)
    return zlib.crc32(struct.pack(f"<{len(symbols)}I", *symbols), crc)


def huffman_encode(symbols, alphabet_size: int = 256) -> bytes:
    """A self-contained Huffman stream of the symbols (each in [0, alphabet_size)): header, length table, payload."""
    alphabet_size = _check_int(alphabet_size, "alphabet_size", 1, MAX_ALPHABET)
    symbols = _as_symbols(symbols)
    if len(symbols) >= 1 << 32:
        raise ValueError(f"symbols: {len(symbols)} symbols; at most 2**32 - 1 fit one stream")
    too_big = next((i for i, s in enumerate(symbols) if s >= alphabet_size), None)
    if too_big is not None:
        raise ValueError(f"symbols[{too_big}]={symbols[too_big]} is outside the alphabet [0, {alphabet_size})")
    code = HuffmanCode.from_frequencies(dict(Counter(symbols)))
    if code.max_length > 255:  # needs counts beyond ~2**180 (Fibonacci growth); here only for completeness
        raise ValueError(f"a code length of {code.max_length} bits does not fit the table's one byte per symbol")
    # Only the lengths are stored (canonical Huffman): one byte per symbol 0..largest used, 0 = "not used".
    table = bytes(code.lengths.get(s, 0) for s in range(code.table_bytes))
    payload, _ = code.encode(symbols)
    fields = _HUFFMAN_HEADER.pack(HUFFMAN_MAGIC, len(symbols), alphabet_size, len(table), 0)[:-4]
    crc = _symbols_crc(fields, table, symbols)
    return fields + struct.pack("<I", crc) + table + payload


def huffman_decode(data: bytes) -> bytes | list[int]:
    """The symbols of a `huffman_encode` stream: bytes if its alphabet_size <= 256, else a list of ints.

    CorruptStream for a wrong magic number, a truncated or damaged stream, or a checksum that does not match."""
    data = _as_bytes(data)
    if len(data) < _HUFFMAN_HEADER.size:
        raise CorruptStream(f"a Huffman stream has a {_HUFFMAN_HEADER.size}-byte header; got {len(data)} bytes")
    magic, n_symbols, alphabet_size, table_size, crc = _HUFFMAN_HEADER.unpack_from(data)
    if magic != HUFFMAN_MAGIC:
        raise CorruptStream(f"not a Huffman stream: magic {magic!r}, expected {HUFFMAN_MAGIC!r}")
    if not 1 <= alphabet_size <= MAX_ALPHABET or table_size > alphabet_size:
        raise CorruptStream(f"damaged header: alphabet_size={alphabet_size}, table of {table_size} entries")
    table = data[_HUFFMAN_HEADER.size:_HUFFMAN_HEADER.size + table_size]
    payload = data[_HUFFMAN_HEADER.size + table_size:]
    if len(table) < table_size:
        raise CorruptStream(f"truncated: the length table needs {table_size} bytes, {len(table)} are left")
    if n_symbols > 8 * len(payload):  # every symbol takes at least one bit: checked before any work
        raise CorruptStream(f"truncated: {n_symbols} symbols cannot fit in {len(payload)} payload bytes")
    try:
        code = HuffmanCode({s: n for s, n in enumerate(table) if n})
    except ValueError as e:
        raise CorruptStream(f"damaged length table: {e}") from None
    reader = BitReader(payload)
    symbols = code._decode(reader, n_symbols)
    # The encoder wrote exactly the bits the symbols need, then zero padding to a whole byte: anything else is damage.
    if (reader.position + 7) // 8 != len(payload):
        raise CorruptStream(f"{len(payload)} payload bytes, but {n_symbols} symbols used {reader.position} bits")
    if reader.position % 8 and reader.read(8 - reader.position % 8) != 0:
        raise CorruptStream("nonzero padding bits after the last symbol")
    if _symbols_crc(data[:_HUFFMAN_HEADER.size - 4], table, symbols) != crc:
        raise CorruptStream("checksum mismatch: the stream decodes, but not to the symbols that were encoded")
    return bytes(symbols) if alphabet_size <= 256 else symbols


# ---------------------------------------------------------------------------------------------
# LZ77: replace a repeat by (offset, length) pointing back into a sliding window
# ---------------------------------------------------------------------------------------------

#: The allowed range of each LZ77 setting. DEFLATE (zlib) uses window 32768, max_length 258, min_match 3.
LZ77_LIMITS = {"window": (1, 1 << 20), "min_match": (2, 32), "max_length": (2, 65535)}


def _check_lz77_settings(window, max_length, min_match) -> tuple[int, int, int]:
    window = _check_int(window, "window", *LZ77_LIMITS["window"])
    min_match = _check_int(min_match, "min_match", *LZ77_LIMITS["min_match"])
    max_length = _check_int(max_length, "max_length", max(min_match, LZ77_LIMITS["max_length"][0]),
                            LZ77_LIMITS["max_length"][1])
    return window, max_length, min_match


def lz77_tokens(data: bytes, window: int = 4096, max_length: int = 258, min_match: int = 3, *,
                max_chain: int = 64) -> list[tuple[int, int, int | None]]:
    """The LZ77 tokens of `data`: (0, 0, byte) for a literal, (offset, length, None) to copy `length` bytes
    starting `offset` bytes back (1 <= offset <= window, min_match <= length <= max_length).

    Literals and matches are separate tokens, as in DEFLATE (Storer and Szymanski's variant of LZ77), rather than
    the 1977 paper's (offset, length, next byte) triples. Greedy parsing: at each position take the longest match
    found among the last `max_chain` earlier positions starting with the same `min_match` bytes."""
    data = _as_bytes(data)
    window, max_length, min_match = _check_lz77_settings(window, max_length, min_match)
    max_chain = _check_int(max_chain, "max_chain", 1)
    n = len(data)
    # The hash chain. Comparing position i with every one of the `window` positions before it would cost
    # n * window byte comparisons (4e8 for 100 kB). A match of at least min_match bytes must start with the same
    # min_match bytes, so remember, for each such key, the latest position where it occurred (`head`), and for each
    # position the previous one with the same key (`previous`): following the chain visits only real candidates,
    # newest (smallest offset) first.
    head: dict[bytes, int] = {}
    previous = [-1] * n

    def remember(i: int) -> None:
        key = data[i:i + min_match]
        previous[i] = head.get(key, -1)
        head[key] = i

    tokens: list[tuple[int, int, int | None]] = []
    i = 0
    while i < n:
        best_length, best_offset = 0, 0
        if i + min_match <= n:
            limit = min(max_length, n - i)
            candidate, steps = head.get(data[i:i + min_match], -1), 0
            while candidate >= 0 and i - candidate <= window and steps < max_chain:
                # Quick reject: to beat the best match so far, the candidate must agree one byte past its end.
                if data[candidate + best_length] == data[i + best_length]:
                    length = 0
                    while length < limit and data[candidate + length] == data[i + length]:
                        length += 1  # may run past i: an overlapping match ("abababab" = "ab" + copy 6 from 2 back)
                    if length > best_length:
                        best_length, best_offset = length, i - candidate
                        if length == limit:  # cannot do better
                            break
                candidate, steps = previous[candidate], steps + 1
            remember(i)
        if best_length >= min_match:
            tokens.append((best_offset, best_length, None))
            for j in range(i + 1, min(i + best_length, n - min_match + 1)):
                remember(j)  # positions inside the match can start later matches too
            i += best_length
        else:
            tokens.append((0, 0, data[i]))
            i += 1
    return tokens


def lz77_detokenize(tokens: Iterable[tuple[int, int, int | None]]) -> bytes:
    """The bytes that LZ77 tokens stand for; CorruptStream for a token that points before the start."""
    out = bytearray()
    for k, token in enumerate(tokens):
        try:
            offset, length, literal = token
        except (TypeError, ValueError):
            raise TypeError(f"tokens[{k}]={token!r} must be a tuple (offset, length, literal)") from None
        if literal is not None:
            if not (isinstance(literal, numbers.Integral) and 0 <= literal <= 255) or offset or length:
                raise ValueError(f"tokens[{k}]={token!r}: a literal token is (0, 0, byte) with byte in [0, 255]")
            out.append(literal)
            continue
        if not (isinstance(offset, numbers.Integral) and isinstance(length, numbers.Integral)) or length < 1:
            raise ValueError(f"tokens[{k}]={token!r}: a match token is (offset >= 1, length >= 1, None)")
        if not 1 <= offset <= len(out):
            raise CorruptStream(f"tokens[{k}]={token!r} points {offset} bytes back, but only {len(out)} bytes "
                                "precede it")
        start = len(out) - offset
        if length <= offset:
            out += out[start:start + length]
        else:  # the copy overlaps what it is writing: byte by byte, so each copied byte can be copied again
            for j in range(length):
                out.append(out[start + j])
    return bytes(out)


LZ77_MAGIC = b"LKZ7"
# magic, mode (0 stored, 1 tokens), window, max_length, min_match, n_bytes, CRC-32
_LZ77_HEADER = struct.Struct("<4sBIHBII")
_STORED, _TOKENS = 0, 1


def _token_bits(window: int, max_length: int, min_match: int) -> tuple[int, int]:
    """Bits for (offset - 1) and (length - min_match) in a packed match token."""
    return (window - 1).bit_length(), (max_length - min_match).bit_length()


def lz77_compress(data: bytes, window: int = 4096, max_length: int = 258, min_match: int = 3) -> bytes:
    """`data` as a self-contained LZ77 stream: a header, then bit-packed tokens (or the raw bytes, if smaller)."""
    data = _as_bytes(data)
    window, max_length, min_match = _check_lz77_settings(window, max_length, min_match)
    if len(data) >= 1 << 32:
        raise ValueError(f"data: {len(data)} bytes; at most 2**32 - 1 fit one stream")
    offset_bits, length_bits = _token_bits(window, max_length, min_match)
    writer = BitWriter()
    for offset, length, literal in lz77_tokens(data, window, max_length, min_match):
        if literal is not None:  # flag 0, then the byte: 9 bits
            writer.write(literal, 9)
        else:  # flag 1, then offset and length, each stored minus its smallest value
            writer.write(1, 1)
            writer.write(offset - 1, offset_bits)
            writer.write(length - min_match, length_bits)
    payload, mode = writer.getvalue(), _TOKENS
    if len(payload) >= len(data):
        # Random bytes have no repeats: every literal would cost 9 bits. Store them as they are instead (DEFLATE's
        # "stored block"), so LZ77 never makes data more than a header larger.
        payload, mode = data, _STORED
    fields = _LZ77_HEADER.pack(LZ77_MAGIC, mode, window, max_length, min_match, len(data), 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(data, zlib.crc32(fields))) + payload


def lz77_decompress(blob: bytes) -> bytes:
    """The bytes of an `lz77_compress` stream; CorruptStream if it is truncated, damaged or fails its checksum."""
    blob = _as_bytes(blob, "blob")
    if len(blob) < _LZ77_HEADER.size:
        raise CorruptStream(f"an LZ77 stream has a {_LZ77_HEADER.size}-byte header; got {len(blob)} bytes")
    magic, mode, window, max_length, min_match, n_bytes, crc = _LZ77_HEADER.unpack_from(blob)
    if magic != LZ77_MAGIC:
        raise CorruptStream(f"not an LZ77 stream: magic {magic!r}, expected {LZ77_MAGIC!r}")
    try:
        _check_lz77_settings(window, max_length, min_match)
    except ValueError as e:
        raise CorruptStream(f"damaged header: {e}") from None
    payload = blob[_LZ77_HEADER.size:]
    if mode == _STORED:
        if len(payload) != n_bytes:
            raise CorruptStream(f"a stored stream of {n_bytes} bytes holds {len(payload)} bytes")
        out = payload
    elif mode == _TOKENS:
        offset_bits, length_bits = _token_bits(window, max_length, min_match)
        # Each token has at least min(9, 1 + offset_bits + length_bits) bits and makes at most max_length bytes:
        # a header claiming more bytes than that is damaged (checked before any work).
        most = 8 * len(payload) // min(9, 1 + offset_bits + length_bits) * max_length
        if n_bytes > most:
            raise CorruptStream(f"truncated: {len(payload)} payload bytes cannot hold {n_bytes} bytes of data")
        reader, buffer = BitReader(payload), bytearray()
        while len(buffer) < n_bytes:
            if reader.read_bit() == 0:
                buffer.append(reader.read(8))
                continue
            offset, length = reader.read(offset_bits) + 1, reader.read(length_bits) + min_match
            if offset > len(buffer):
                raise CorruptStream(f"a match points {offset} bytes back at byte {len(buffer)}: before the start")
            if len(buffer) + length > n_bytes:
                raise CorruptStream(f"a match of {length} bytes at byte {len(buffer)} runs past the end ({n_bytes})")
            start = len(buffer) - offset
            for j in range(length):  # byte by byte: the copy may overlap itself (see lz77_detokenize)
                buffer.append(buffer[start + j])
        if (reader.position + 7) // 8 != len(payload) or (reader.position % 8 and
                                                           reader.read(8 - reader.position % 8) != 0):
            raise CorruptStream(f"{len(payload)} payload bytes, but the tokens end at bit {reader.position}")
        out = bytes(buffer)
    else:
        raise CorruptStream(f"damaged header: mode {mode} (0 = stored, 1 = tokens)")
    if zlib.crc32(out, zlib.crc32(blob[:_LZ77_HEADER.size - 4])) != crc:
        raise CorruptStream("checksum mismatch: the stream decodes, but not to the bytes that were compressed")
    return out


# ---------------------------------------------------------------------------------------------
# LZ77 + Huffman (DEFLATE's idea in miniature) and the comparison with the standard library
# ---------------------------------------------------------------------------------------------

_LZH_MAGIC = b"LKZH"


def _lz77_huffman_compress(data: bytes, window: int = 4096, max_length: int = 258, min_match: int = 3) -> bytes:
    """LZ77 tokens, then Huffman codes for them: DEFLATE's two steps, each written out above."""
    # As in DEFLATE, literals and match lengths share one alphabet (0..255 a byte, 256 + k a length min_match + k),
    # so that the code learns how often a match happens at all. Offsets (up to 2**20) are split into a high part,
    # Huffman coded because small offsets are common, and the low 8 bits, which are nearly uniform.
    litlen, offset_high, offset_low = [], [], bytearray()
    for offset, length, literal in lz77_tokens(data, window, max_length, min_match):
        if literal is not None:
            litlen.append(literal)
        else:
            litlen.append(256 + length - min_match)
            offset_high.append((offset - 1) >> 8)
            offset_low.append((offset - 1) & 0xFF)
    parts = [huffman_encode(litlen, 256 + max_length - min_match + 1),
             huffman_encode(offset_high, max(1, (window - 1) >> 8) + 1), bytes(offset_low)]
    header = _LZH_MAGIC + struct.pack("<HB3I", max_length, min_match, *(len(p) for p in parts))
    return header + b"".join(parts)


def _lz77_huffman_decompress(blob: bytes) -> bytes:
    """The bytes of a `_lz77_huffman_compress` stream (CorruptStream if damaged)."""
    head = struct.Struct("<4sHB3I")
    if len(blob) < head.size or blob[:4] != _LZH_MAGIC:
        raise CorruptStream("not an LZ77 + Huffman stream (too short or wrong magic)")
    _, max_length, min_match, *sizes = head.unpack_from(blob)
    if head.size + sum(sizes) != len(blob):
        raise CorruptStream(f"the parts' sizes {sizes} do not add up to the {len(blob) - head.size} bytes left")
    cuts = [head.size, head.size + sizes[0], head.size + sizes[0] + sizes[1], len(blob)]
    litlen, offset_high = (huffman_decode(blob[a:b]) for a, b in zip(cuts[:2], cuts[1:3]))
    offset_low = blob[cuts[2]:]
    if len(offset_high) != len(offset_low):
        raise CorruptStream("the offset parts disagree in length")
    tokens, k = [], 0
    for symbol in litlen:
        if symbol < 256:
            tokens.append((0, 0, symbol))
        else:
            if k >= len(offset_low):
                raise CorruptStream("more matches than offsets")
            tokens.append(((offset_high[k] << 8 | offset_low[k]) + 1, symbol - 256 + min_match, None))
            k += 1
    if k != len(offset_low):
        raise CorruptStream("more offsets than matches")
    return lz77_detokenize(tokens)  # its CorruptStream catches an offset before the start


def compare_coders(data: bytes, progress: bool = True) -> list[dict]:
    """One row per coder on the same bytes: coder, bytes, ratio (raw/coded), bits_per_byte, encode_ms, decode_ms
    and roundtrip_ok (its output decoded and compared with `data`). Times are one run each (wall clock, ms)."""
    from tqdm.auto import tqdm

    data = _as_bytes(data)
    if not data:
        raise ValueError("compare_coders: data is empty; give at least one byte")
    coders = [
        ("raw", bytes, bytes),
        ("huffman", huffman_encode, huffman_decode),
        ("lz77", lz77_compress, lz77_decompress),
        ("lz77 + huffman", _lz77_huffman_compress, _lz77_huffman_decompress),
        ("zlib -9", lambda d: zlib.compress(d, 9), zlib.decompress),  # DEFLATE: LZ77 (32 kB window) + Huffman
        ("lzma", lzma.compress, lzma.decompress),  # LZ77-style matches + range coding with context models (-6)
        ("bz2", lambda d: bz2.compress(d, 9), bz2.decompress),  # Burrows-Wheeler transform + move-to-front + Huffman
    ]
    rows = []
    for name, encode, decode in tqdm(coders, desc="coders", disable=not progress):
        start = time.perf_counter()
        coded = encode(data)
        encode_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        decoded = decode(coded)
        decode_ms = 1000 * (time.perf_counter() - start)
        rows.append({"coder": name, "bytes": len(coded), "ratio": len(data) / len(coded),
                     "bits_per_byte": 8 * len(coded) / len(data), "encode_ms": encode_ms, "decode_ms": decode_ms,
                     "roundtrip_ok": bytes(decoded) == data})
    return rows
