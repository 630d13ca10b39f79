"""labkit.compress: entropy, Huffman lengths against an independent construction, canonical codes, exact
roundtrips on random bytes (hypothesis), damaged streams rejected with CorruptStream, and clear errors."""
from __future__ import annotations

import bisect
import random
import struct
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import compress
from labkit.compress import (
    BitReader,
    BitWriter,
    CorruptStream,
    HuffmanCode,
    canonical_codes,
    entropy_bits,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
)

# Byte strings that matter for a coder: empty, one repeated symbol, every byte value, skewed and random text.
special_bytes = st.one_of(
    st.just(b""),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.integers(1, 300)),
    st.just(bytes(range(256))),
    st.permutations(list(range(256))).map(bytes),
    st.binary(max_size=600),
    st.lists(st.sampled_from(b"aaaaaaabbbc d"), max_size=600).map(bytes),
)
frequency_dicts = st.dictionaries(st.integers(0, 300), st.integers(0, 10_000), max_size=60)


def optimal_cost(frequencies: dict[int, int]) -> int:
    """The optimal prefix code's total bits, sum(count * length), written differently from labkit: a Huffman
    tree's cost is the sum of the weights of its merged nodes, and here the queue is a sorted list, not a heap."""
    weights = sorted(c for c in frequencies.values() if c > 0)
    if len(weights) <= 1:
        return sum(weights)  # one symbol costs one bit per occurrence; none costs nothing
    cost = 0
    while len(weights) > 1:
        merged = weights.pop(0) + weights.pop(0)
        cost += merged
        bisect.insort(weights, merged)
    return cost


def kraft_sum(lengths: dict[int, int]) -> float:
    return sum(2.0 ** -n for n in lengths.values())


# --- entropy ---------------------------------------------------------------------------------

def test_entropy_known_values():
    assert entropy_bits(b"aaaa") == 0.0
    assert entropy_bits(b"ab") == pytest.approx(1.0)
    assert entropy_bits(bytes(range(256))) == pytest.approx(8.0)
    assert entropy_bits({0: 2, 1: 1, 2: 1}) == pytest.approx(1.5)
    assert entropy_bits({7: 3, 8: 0}) == 0.0
    assert entropy_bits(torch.tensor([1, 2, 3, 4])) == pytest.approx(2.0)
    assert entropy_bits(np.array([5, 5, 6, 6], dtype=np.uint8)) == pytest.approx(1.0)
    assert entropy_bits([0, 0, 1, 1]) == entropy_bits(Counter([0, 0, 1, 1]))


@pytest.mark.parametrize("bad, error, words", [
    (b"", ValueError, "empty"), ([], ValueError, "empty"), ({}, ValueError, "empty"), ({1: 0}, ValueError, "zero"),
    ({1: -2}, ValueError, "negative"), ("text", TypeError, "str"), ([1, -1], ValueError, "non-negative"),
    (torch.tensor([0.5]), TypeError, "integers"), (torch.zeros(2, 2, dtype=torch.long), ValueError, "1-D"),
    (torch.tensor([3, -4]), ValueError, r"\[1\]=-4"), (np.array([-1, 2]), ValueError, r"\[0\]=-1"),
])
def test_entropy_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        entropy_bits(bad)


# --- Huffman lengths -------------------------------------------------------------------------

def test_lengths_textbook_example():
    assert huffman_code_lengths({ord("a"): 5, ord("b"): 2, ord("c"): 1, ord("d"): 1}) == {97: 1, 98: 2, 99: 3, 100: 3}
    assert huffman_code_lengths({}) == {}
    assert huffman_code_lengths({42: 7}) == {42: 1}
    assert huffman_code_lengths({3: 0, 4: 9}) == {4: 1}  # zero-frequency symbols get no code
    assert huffman_code_lengths({0: 1, 1: 1, 2: 1, 3: 1}) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_lengths_tie_break_is_deterministic():
    freqs = {s: 1 for s in range(5)}
    first = huffman_code_lengths(freqs)
    assert huffman_code_lengths(dict(reversed(list(freqs.items())))) == first  # dict order does not matter
    # ties broken by the smallest symbol: 0 and 1 merge first, then 2 and 3, then 4 with (0,1) -> 4 and 0,1 deeper
    assert first == {0: 3, 1: 3, 2: 2, 3: 2, 4: 2}


@settings(max_examples=300, deadline=None)
@given(frequency_dicts)
def test_lengths_are_optimal_and_complete(freqs):
    lengths = huffman_code_lengths(freqs)
    used = {s for s, c in freqs.items() if c > 0}
    assert set(lengths) == used
    assert all(isinstance(n, int) and n >= 1 for n in lengths.values())
    assert sum(freqs[s] * n for s, n in lengths.items()) == optimal_cost(freqs)
    if len(used) >= 2:
        assert kraft_sum(lengths) == 1.0  # a Huffman code wastes no code space
    elif used:
        assert kraft_sum(lengths) == 0.5


@settings(max_examples=200, deadline=None)
@given(frequency_dicts.filter(lambda d: any(d.values())))
def test_average_length_within_one_bit_of_entropy(freqs):
    code = HuffmanCode.from_frequencies(freqs)
    h, avg = entropy_bits(freqs), code.average_length(freqs)
    if len([c for c in freqs.values() if c > 0]) == 1:
        assert (h, avg) == (0.0, 1.0)  # the one case L = H + 1: a lone symbol still costs a bit
    else:
        assert h - 1e-9 <= avg < h + 1


@pytest.mark.parametrize("bad, error, words", [
    ([1, 2], TypeError, "dict"), ({1: -1}, ValueError, r"frequencies\[1\]=-1"), ({-3: 2}, ValueError, "-3"),
    ({1: 1.5}, ValueError, "1.5"), ({"a": 1}, ValueError, "'a'"), ({1: True}, ValueError, "True"),
])
def test_lengths_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        huffman_code_lengths(bad)


# --- canonical codes -------------------------------------------------------------------------

def test_canonical_codes_count_up_by_length_then_symbol():
    codes = canonical_codes({ord("a"): 1, ord("b"): 2, ord("c"): 3, ord("d"): 3})
    assert codes == {97: (0b0, 1), 98: (0b10, 2), 99: (0b110, 3), 100: (0b111, 3)}
    # the same lengths given in another order give the same codes (only lengths are stored)
    assert canonical_codes({100: 3, 99: 3, 98: 2, 97: 1}) == codes
    assert canonical_codes({}) == {}


@settings(max_examples=150, deadline=None)
@given(frequency_dicts)
def test_canonical_codes_are_prefix_free(freqs):
    codes = canonical_codes(huffman_code_lengths(freqs))
    words = [format(code, f"0{n}b") for code, n in codes.values()]
    assert all(len(w) == n for w, (_, n) in zip(words, codes.values()))
    for a in words:
        for b in words:
            assert a is b or not b.startswith(a)


def test_canonical_codes_reject_impossible_lengths():
    with pytest.raises(ValueError, match="Kraft sum 1.25"):
        canonical_codes({0: 1, 1: 1, 2: 2})
    with pytest.raises(ValueError, match=r"lengths\[0\]=0"):
        canonical_codes({0: 0})


# --- bits ------------------------------------------------------------------------------------

def test_bit_writer_packs_msb_first_and_reader_reads_back():
    w = BitWriter()
    for value, n in [(1, 1), (0b01, 2), (0b10110, 5), (0xABC, 12), (0, 3)]:
        w.write(value, n)
    assert w.n_bits == 23
    data = w.getvalue()
    assert data == bytes([0b10110110, 0xAB, 0b11000000])
    r = BitReader(data)
    assert [r.read(n) for n in (1, 2, 5, 12, 3)] == [1, 0b01, 0b10110, 0xABC, 0]
    assert r.read(1) == 0  # padding
    with pytest.raises(CorruptStream, match="ended"):
        BitReader(data).read(25)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40).flatmap(lambda n: st.tuples(st.integers(0, 2**n - 1), st.just(n))), max_size=60))
def test_bit_writer_matches_a_string_of_bits(writes):
    """Against the slow, obvious packing: write each value as '0'/'1' characters, pad, read 8 at a time."""
    w = BitWriter()
    for value, n in writes:
        w.write(value, n)
    bits = "".join(format(value, f"0{n}b") if n else "" for value, n in writes)
    bits += "0" * (-len(bits) % 8)
    assert w.n_bits == sum(n for _, n in writes)
    assert w.getvalue() == bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    r = BitReader(w.getvalue())
    assert [r.read(n) for _, n in writes] == [value for value, _ in writes]


# --- encode / decode -------------------------------------------------------------------------

def test_encode_textbook_bits():
    code = HuffmanCode.from_symbols(b"aaaaabbcd")
    data, n_bits = code.encode(b"abcd")
    assert n_bits == 1 + 2 + 3 + 3 and data == bytes([0b01011011, 0b10000000])
    assert code.decode(data, 4) == list(b"abcd")
    assert code.table_bytes == ord("d") + 1
    assert code.encoded_bytes(b"abcd") == 2 + 101 and code.encoded_bytes(b"abcd", include_table=False) == 2


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(special_bytes)
def test_huffman_roundtrip(data):
    assert huffman_decode(huffman_encode(data)) == data
    if data:
        code = HuffmanCode.from_symbols(data)
        packed, n_bits = code.encode(data)
        assert code.decode(packed, len(data)) == list(data)
        assert n_bits == sum(code.lengths[b] for b in data)
        assert len(packed) == (n_bits + 7) // 8


def test_huffman_stream_large_alphabet_and_tensors():
    rng = random.Random(0)
    symbols = [rng.randrange(1000) for _ in range(2000)]
    assert huffman_decode(huffman_encode(symbols, alphabet_size=1000)) == symbols
    t = torch.randint(0, 16, (500,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert huffman_decode(huffman_encode(t, alphabet_size=16)) == bytes(t.tolist())


def test_huffman_stream_size_is_header_table_payload():
    data = b"abracadabra" * 20
    code = HuffmanCode.from_symbols(data)
    _, n_bits = code.encode(data)
    assert len(huffman_encode(data)) == compress._HUFFMAN_HEADER.size + code.table_bytes + (n_bits + 7) // 8
    # the stream is smaller than the raw bytes once the text is long enough to pay for the table
    assert len(huffman_encode(data)) < len(data)


@pytest.mark.parametrize("call, error, words", [
    (lambda: huffman_encode(b"ab", alphabet_size=0), ValueError, r"alphabet_size=0 .*\[1, 65536\]"),
    (lambda: huffman_encode([300], alphabet_size=256), ValueError, r"symbols\[0\]=300 .*\[0, 256\)"),
    (lambda: huffman_encode("text"), TypeError, "str"),
    (lambda: huffman_encode([1, -1]), ValueError, r"symbols\[1\]=-1"),
    (lambda: huffman_decode("text"), TypeError, "bytes"),
    (lambda: HuffmanCode.from_symbols(b"ab").encode(b"abc"), ValueError, r"symbols\[2\]=99 has no code"),
    (lambda: HuffmanCode.from_symbols(b"ab").average_length({ord("z"): 1}), ValueError, "no code"),
])
def test_huffman_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


def corpus_like_bytes(n: int = 3000, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"the ", b"king ", b"and ", b"queen ", b"of ", b"love ", b"death\n"]
    out = b""
    while len(out) < n:
        out += rng.choice(words)
    return out[:n]


def test_huffman_truncated_stream_is_rejected():
    stream = huffman_encode(corpus_like_bytes())
    for cut in [0, 3, 10, 19, 20, 25, 100, len(stream) // 2, len(stream) - 1]:
        with pytest.raises(CorruptStream):
            huffman_decode(stream[:cut])
    with pytest.raises(CorruptStream):
        huffman_decode(stream + b"\x00")


def test_huffman_wrong_magic_is_rejected():
    stream = huffman_encode(b"hello hello")
    with pytest.raises(CorruptStream, match="magic"):
        huffman_decode(b"XXXX" + stream[4:])
    with pytest.raises(CorruptStream, match="magic"):
        huffman_decode(b"\x1f\x8b" + bytes(30))  # a gzip file is not our stream


def test_huffman_every_single_bit_flip_is_rejected():
    """Flip each bit of a small stream: the decoder must notice every one (header, table, payload, padding)."""
    stream = huffman_encode(corpus_like_bytes(400))
    for bit in range(8 * len(stream)):
        damaged = bytearray(stream)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(CorruptStream):
            huffman_decode(bytes(damaged))


def test_huffman_huge_symbol_count_fails_fast():
    stream = bytearray(huffman_encode(b"abc"))
    struct.pack_into("<I", stream, 4, 2**32 - 1)  # claims 4 billion symbols in a 1-byte payload
    with pytest.raises(CorruptStream, match="cannot fit"):
        huffman_decode(bytes(stream))


def test_one_symbol_code_rejects_the_unused_bit():
    code = HuffmanCode({7: 1})  # the only codeword is "0"
    assert code.decode(bytes([0b00000000]), 3) == [7, 7, 7]
    with pytest.raises(CorruptStream, match="match no code"):
        code.decode(bytes([0b01000000]), 3)


# --- LZ77 ------------------------------------------------------------------------------------

def brute_force_tokens(data: bytes, window: int, max_length: int, min_match: int) -> list[tuple]:
    """Greedy LZ77 without a hash chain: try every offset 1..window, keep the first (smallest) longest match."""
    tokens, i = [], 0
    while i < len(data):
        best_length, best_offset = 0, 0
        for offset in range(1, min(window, i) + 1):
            length = 0
            while length < min(max_length, len(data) - i) and data[i - offset + length] == data[i + length]:
                length += 1
            if length > best_length:
                best_length, best_offset = length, offset
        if best_length >= min_match:
            tokens.append((best_offset, best_length, None))
            i += best_length
        else:
            tokens.append((0, 0, data[i]))
            i += 1
    return tokens


def test_lz77_tokens_textbook_example():
    assert compress.lz77_tokens(b"abcabcabcabc") == [(0, 0, 97), (0, 0, 98), (0, 0, 99), (3, 9, None)]
    assert compress.lz77_tokens(b"aaaaaa") == [(0, 0, 97), (1, 5, None)]  # a match may overlap itself
    assert compress.lz77_tokens(b"") == []
    assert compress.lz77_detokenize([(0, 0, 97), (1, 5, None)]) == b"aaaaaa"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(b"abc"), max_size=120).map(bytes), st.integers(1, 40), st.integers(2, 4),
       st.integers(0, 30))
def test_lz77_hash_chain_finds_the_longest_match(data, window, min_match, extra):
    """With a chain long enough to see the whole window, the hash chain finds what trying every offset finds."""
    max_length = min_match + extra
    assert (compress.lz77_tokens(data, window, max_length, min_match, max_chain=10**6)
            == brute_force_tokens(data, window, max_length, min_match))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(special_bytes, st.sampled_from([(4096, 258, 3), (1, 2, 2), (16, 20, 4), (1 << 20, 65535, 32)]))
def test_lz77_roundtrip(data, setting):
    window, max_length, min_match = setting
    tokens = compress.lz77_tokens(data, window, max_length, min_match)
    assert compress.lz77_detokenize(tokens) == data
    for offset, length, literal in tokens:
        assert (offset, length) == (0, 0) if literal is not None else (1 <= offset <= window
                                                                        and min_match <= length <= max_length)
    blob = compress.lz77_compress(data, window, max_length, min_match)
    assert compress.lz77_decompress(blob) == data
    assert len(blob) <= len(data) + compress._LZ77_HEADER.size  # never worse than raw + the header


def test_lz77_random_bytes_are_stored_not_expanded():
    data = random.Random(0).randbytes(20_000)
    blob = compress.lz77_compress(data)
    assert len(blob) == len(data) + compress._LZ77_HEADER.size  # 9-bit literals would be 1.125x: stored instead
    assert compress.lz77_decompress(blob) == data


def test_lz77_compresses_repetitive_text():
    data = corpus_like_bytes(5000)
    blob = compress.lz77_compress(data)
    assert len(blob) < len(data) / 3 and compress.lz77_decompress(blob) == data


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(window=0), ValueError, r"window=0 .*\[1, 1048576\]"),
    (dict(window=(1 << 20) + 1), ValueError, r"window=1048577 .*\[1, 1048576\]"),
    (dict(window=2.5), TypeError, "window=2.5"),
    (dict(min_match=1), ValueError, r"min_match=1 .*\[2, 32\]"),
    (dict(max_length=2), ValueError, r"max_length=2 .*\[3, 65535\]"),  # below min_match=3
    (dict(max_length=65536), ValueError, r"max_length=65536 .*\[3, 65535\]"),
])
def test_lz77_settings_out_of_range(kwargs, error, words):
    with pytest.raises(error, match=words):
        compress.lz77_tokens(b"abcabc", **kwargs)
    with pytest.raises(error, match=words):
        compress.lz77_compress(b"abcabc", **kwargs)


@pytest.mark.parametrize("tokens, error, words", [
    ([(1, 3, None)], CorruptStream, "before the start|only 0 bytes"),
    ([(0, 0, 97), (2, 3, None)], CorruptStream, "2 bytes back"),
    ([(0, 0, 300)], ValueError, "literal"),
    ([(1, 0, None)], ValueError, "match"),
    ([(1, 2)], TypeError, "tuple"),
])
def test_lz77_detokenize_bad_tokens(tokens, error, words):
    with pytest.raises(error, match=words):
        compress.lz77_detokenize(tokens)


def test_lz77_truncated_and_wrong_magic_are_rejected():
    blob = compress.lz77_compress(corpus_like_bytes())
    for cut in [0, 5, 19, 20, 21, len(blob) // 2, len(blob) - 1]:
        with pytest.raises(CorruptStream):
            compress.lz77_decompress(blob[:cut])
    with pytest.raises(CorruptStream):
        compress.lz77_decompress(blob + b"\x00")
    with pytest.raises(CorruptStream, match="magic"):
        compress.lz77_decompress(compress.HUFFMAN_MAGIC + blob[4:])


@pytest.mark.parametrize("data", [corpus_like_bytes(300), random.Random(1).randbytes(60)],
                         ids=["tokens", "stored"])
def test_lz77_every_single_bit_flip_is_rejected(data):
    blob = compress.lz77_compress(data, window=64, max_length=32)
    for bit in range(8 * len(blob)):
        damaged = bytearray(blob)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(CorruptStream):
            compress.lz77_decompress(bytes(damaged))


def test_lz77_offset_before_the_start_is_corruption():
    # a hand-made token stream whose first token is a match: flag 1, offset 5, length 3
    w = BitWriter()
    w.write(1, 1), w.write(4, 12), w.write(0, 8)
    fields = compress._LZ77_HEADER.pack(compress.LZ77_MAGIC, 1, 4096, 258, 3, 3, 0)[:-4]
    with pytest.raises(CorruptStream, match="before the start"):
        compress.lz77_decompress(fields + bytes(4) + w.getvalue())


def test_lz77_huge_length_claim_fails_fast():
    blob = bytearray(compress.lz77_compress(b"abcabcabcabc" * 10))
    struct.pack_into("<I", blob, 12, 2**32 - 1)  # n_bytes
    with pytest.raises(CorruptStream, match="cannot hold"):
        compress.lz77_decompress(bytes(blob))


# --- LZ77 + Huffman and the comparison with the standard library -------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(special_bytes)
def test_lz77_huffman_roundtrip(data):
    assert compress._lz77_huffman_decompress(compress._lz77_huffman_compress(data)) == data


def text_like_bytes(n: int = 15_000, seed: int = 0) -> bytes:
    """Words from a vocabulary of 300 made-up words: repeats for LZ77, skewed letters for Huffman."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"etaoinshrdlu") for _ in range(rng.randint(2, 8))) + b" " for _ in range(300)]
    return b"".join(rng.choice(words) for _ in range(n // 2))[:n]


def test_compare_coders_rows():
    data = text_like_bytes()
    rows = compress.compare_coders(data, progress=False)
    assert [r["coder"] for r in rows] == ["raw", "huffman", "lz77", "lz77 + huffman", "zlib -9", "lzma", "bz2"]
    by_coder = {r["coder"]: r for r in rows}
    assert all(r["roundtrip_ok"] is True for r in rows)
    assert by_coder["raw"]["bytes"] == len(data) and by_coder["raw"]["ratio"] == 1.0
    assert by_coder["huffman"]["bytes"] == len(huffman_encode(data))
    assert by_coder["lz77"]["bytes"] == len(compress.lz77_compress(data))
    assert by_coder["zlib -9"]["bytes"] == len(__import__("zlib").compress(data, 9))
    for r in rows:
        assert r["ratio"] == pytest.approx(len(data) / r["bytes"])
        assert r["bits_per_byte"] == pytest.approx(8 * r["bytes"] / len(data))
        assert r["encode_ms"] >= 0 and r["decode_ms"] >= 0
    # Huffman alone cannot beat the entropy of single bytes; the two ideas together beat each one alone
    assert by_coder["huffman"]["bits_per_byte"] >= entropy_bits(data)
    assert by_coder["lz77 + huffman"]["bytes"] < min(by_coder["lz77"]["bytes"], by_coder["huffman"]["bytes"])
    assert max(r["bytes"] for r in rows if r["coder"] != "raw") < len(data)


def test_compare_coders_bad_input():
    with pytest.raises(ValueError, match="empty"):
        compress.compare_coders(b"", progress=False)
    with pytest.raises(TypeError, match="data must be bytes"):
        compress.compare_coders("text", progress=False)


# --- python -m labkit.bench compress -----------------------------------------------------------

def test_bench_compress_on_the_synthetic_corpus(corpus, monkeypatch, capsys):
    from labkit import bench

    monkeypatch.setattr(bench.data_mod, "load_corpus", lambda *a, **k: corpus)
    out = bench.main(["compress", "--repeats", "2"])
    assert out["n_bytes"] == 100_000 and out["repeats"] == 2
    assert out["entropy_bits"] <= out["huffman_average_bits"] < out["entropy_bits"] + 1
    assert [r["coder"] for r in out["coders"]][:2] == ["raw", "huffman"]
    assert all(r["roundtrip_ok"] for r in out["coders"])
    printed = capsys.readouterr().out
    assert "lz77 + huffman" in printed and "zlib -9" in printed


@pytest.mark.parametrize("args, words", [(["compress", "--iters", "3"], "trains nothing"),
                                         (["compress", "--shape", "4x8"], "only 'sparse' takes it"),
                                         (["train", "--repeats", "2"], "only 'sparse' and 'compress' take it")])
def test_bench_compress_bad_arguments_exit_2(args, words, capsys):
    from labkit import bench

    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err
