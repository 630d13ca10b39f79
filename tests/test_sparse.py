"""labkit.sparse: exact byte counts (against torch.save's stored bytes), lossless roundtrips, matmul vs dense,
break-even densities, torch.sparse's bytes, and clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import sparse
from labkit.sparse import (COO, CSR, FORMAT_CLASSES, FORMATS, INDEX_DTYPES, Bitmap, RelativeIndex,
                           bitmap_bytes, break_even_density, coo_bytes, csr_bytes, dense_bytes,
                           expected_fillers_per_nonzero, format_bytes, relative_bytes, relative_fillers,
                           serialized_bytes, torch_sparse_bytes)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int32]
BITS_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:  # the raw bit patterns, so NaN payloads and -0.0 are compared
    return t.view(BITS_VIEW[t.element_size()])


def zero_is_plus_zero(w: torch.Tensor) -> torch.Tensor:
    """w with -0.0 replaced by +0.0: what every format gives back (-0.0 is a zero, not stored)."""
    return torch.where(w == 0, torch.zeros_like(w), w)


def build(fmt: str, w: torch.Tensor, index_bytes=4, gap_bits=4):
    if fmt in ("coo", "csr"):
        return FORMAT_CLASSES[fmt].from_dense(w, index_bytes=index_bytes)
    if fmt == "relative":
        return RelativeIndex.from_dense(w, gap_bits=gap_bits)
    return Bitmap.from_dense(w)


def random_matrix(n_rows, n_cols, density, dtype=torch.float32, seed=0, specials=False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(n_rows, n_cols, generator=gen) < density
    if dtype.is_floating_point:
        values = torch.randn(n_rows, n_cols, generator=gen, dtype=torch.float64)
        values = torch.where(values == 0, 1.0, values)
    else:
        signs = 1 - 2 * torch.randint(0, 2, (n_rows, n_cols), generator=gen)
        values = torch.randint(1, 100, (n_rows, n_cols), generator=gen) * signs
    w = (values * keep).to(dtype)
    if specials and dtype.is_floating_point and w.numel():
        flat = w.view(-1)
        picks = torch.randint(0, w.numel(), (4,), generator=gen)
        for p, v in zip(picks.tolist(), [float("nan"), float("inf"), float("-inf"), -0.0]):
            flat[p] = v
    return w


@st.composite
def matrices(draw):
    n_rows = draw(st.integers(0, 12))
    n_cols = draw(st.integers(0, 90))
    density = draw(st.sampled_from([0.0, 0.002, 0.01, 0.05, 0.3, 0.9, 1.0]) | st.floats(0.0, 1.0))
    dtype = draw(st.sampled_from(DTYPES))
    return random_matrix(n_rows, n_cols, density, dtype, draw(st.integers(0, 2 ** 31)), draw(st.booleans()))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=matrices(), fmt=st.sampled_from(FORMATS[1:]), index_bytes=st.sampled_from([2, 4, 8, "smallest"]),
       gap_bits=st.sampled_from([4, 8]))
def test_roundtrip_is_bit_exact_and_bytes_are_exact(w, fmt, index_bytes, gap_bits):
    s = build(fmt, w, index_bytes, gap_bits)
    back = s.to_dense()
    assert back.shape == w.shape and back.dtype == w.dtype
    assert torch.equal(bits(back), bits(zero_is_plus_zero(w)))            # NaN payloads, inf, values: bit for bit
    nnz = int((w != 0).sum())
    assert s.nnz == nnz
    arrays = s.arrays()
    assert all(a.is_contiguous() and a.untyped_storage().nbytes() == a.nbytes for a in arrays.values())
    # exact bytes: the formula == the real arrays == what torch.save stores for them == format_bytes
    assert s.nbytes == sum(a.nbytes for a in arrays.values()) == serialized_bytes(arrays)
    assert s.nbytes == format_bytes(fmt, w, index_bytes=index_bytes, gap_bits=gap_bits)
    vb = w.element_size()
    if fmt == "coo":
        assert s.nbytes == coo_bytes(nnz, vb, s.index_bytes)
        assert arrays["rows"].dtype == arrays["cols"].dtype == INDEX_DTYPES[s.index_bytes]
    elif fmt == "csr":
        assert s.nbytes == csr_bytes(w.shape[0], nnz, vb, s.index_bytes)
        assert arrays["crow"].dtype == arrays["cols"].dtype == INDEX_DTYPES[s.index_bytes]
    elif fmt == "bitmap":
        assert s.nbytes == bitmap_bytes(*w.shape, nnz, vb) and arrays["bits"].dtype == torch.uint8
    else:
        assert s.n_fillers == relative_fillers(w, gap_bits)
        assert s.nbytes == relative_bytes(nnz + s.n_fillers, vb, gap_bits) and arrays["gaps"].dtype == torch.uint8
    assert arrays["values"].dtype == w.dtype


@settings(max_examples=150, deadline=None)
@given(w=matrices(), fmt=st.sampled_from(["coo", "csr"]))
def test_one_byte_indices_work_exactly_when_every_index_fits(w, fmt):
    n_rows, n_cols = w.shape
    nnz = int((w != 0).sum())
    largest = max(n_rows - 1, n_cols - 1, 0) if fmt == "coo" else max(n_cols - 1, nnz)
    if largest <= 255:
        s = build(fmt, w, index_bytes=1)
        assert s.nbytes == serialized_bytes(s.arrays()) and torch.equal(bits(s.to_dense()), bits(zero_is_plus_zero(w)))
        assert build(fmt, w, index_bytes="smallest").index_bytes == 1
    else:
        with pytest.raises(ValueError, match=f"index_bytes=1 is too small.*reaches {largest}"):
            build(fmt, w, index_bytes=1)


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_transposed_and_trainable_weights(fmt):
    """A non-contiguous view and an nn.Linear weight (requires_grad) are stored like any matrix."""
    layer = torch.nn.Linear(30, 20)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(20, 30, generator=torch.Generator().manual_seed(12)) < 0.3)
    for w in (layer.weight, layer.weight.T):
        s = build(fmt, w)
        assert not any(a.requires_grad for a in s.arrays().values())
        assert torch.equal(s.to_dense(), w.detach()) and s.nbytes == serialized_bytes(s.arrays())


@settings(max_examples=120, deadline=None)
@given(w=matrices(), fmt=st.sampled_from(FORMATS[1:]), batch=st.integers(1, 4), seed=st.integers(0, 1000))
def test_matmul_matches_dense(w, fmt, batch, seed):
    w = torch.where(torch.isfinite(w.double()), w.double(), 0.0).to(w.dtype) if w.dtype.is_floating_point else w
    x = torch.randn(batch, w.shape[1], generator=torch.Generator().manual_seed(seed))
    got = build(fmt, w).matmul(x)
    assert got.shape == (batch, w.shape[0]) and got.dtype == torch.promote_types(x.dtype, w.dtype)
    torch.testing.assert_close(got.double(), x.double() @ w.double().T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS[1:])
def test_matmul_is_a_linear_layer_on_3d_input(fmt):
    w = random_matrix(24, 40, 0.3, seed=1)
    linear = torch.nn.Linear(40, 24, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w)
    x = torch.randn(2, 5, 40, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(build(fmt, w).matmul(x), linear(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS[1:])
@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (7, 0), (1, 50), (50, 1)])
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_edge_shapes_empty_full_single_row_and_column(fmt, shape, density):
    w = random_matrix(*shape, density, seed=3)
    s = build(fmt, w)
    assert torch.equal(s.to_dense(), w)
    assert s.nbytes == sum(a.nbytes for a in s.arrays().values()) == serialized_bytes(s.arrays())
    nnz = w.numel() if density == 1.0 else 0
    expected = {"coo": coo_bytes(nnz), "csr": csr_bytes(shape[0], nnz), "bitmap": bitmap_bytes(*shape, nnz),
                "relative": relative_bytes(nnz)}[fmt]                       # a full matrix has no gaps, no fillers
    assert s.nbytes == expected
    x = torch.randn(3, shape[1])
    torch.testing.assert_close(s.matmul(x), x @ w.T)


@pytest.mark.parametrize("gap_bits, skip, fillers", [(4, 15, 0), (4, 16, 1), (4, 31, 1), (4, 32, 2), (4, 999, 62),
                                                     (8, 255, 0), (8, 256, 1), (8, 999, 3)])
def test_relative_index_fillers_counted_exactly(gap_bits, skip, fillers):
    """One nonzero after `skip` zeros: skip // 2**gap_bits fillers, and the bytes follow."""
    w = torch.zeros(1, skip + 1)
    w[0, -1] = 2.5
    s = RelativeIndex.from_dense(w, gap_bits=gap_bits)
    assert s.n_fillers == fillers and s.nnz == 1
    n_entries = fillers + 1
    assert s.nbytes == 4 * n_entries + math.ceil(n_entries * gap_bits / 8) == serialized_bytes(s.arrays())
    assert torch.equal(s.to_dense(), w)


def test_relative_index_scans_row_major_across_row_ends():
    w = torch.zeros(3, 10)
    w[0, 9], w[1, 0], w[2, 5] = 1.0, 2.0, 3.0      # flat positions 9, 10, 25 -> skips 9, 0, 14
    s = RelativeIndex.from_dense(w, gap_bits=4)
    assert s.n_fillers == 0
    assert s.gaps.tolist() == [9 | (0 << 4), 14]    # two 4-bit gaps per byte, first in the low nibble
    assert s.values.tolist() == [1.0, 2.0, 3.0]
    assert RelativeIndex.from_dense(w, gap_bits=8).gaps.tolist() == [9, 0, 14]


def test_bitmap_packing_matches_numpy_packbits():
    w = random_matrix(7, 13, 0.4, seed=4)
    expected = np.packbits((w != 0).flatten().numpy(), bitorder="little")
    assert Bitmap.from_dense(w).bits.numpy().tolist() == expected.tolist()


def test_minus_zero_is_a_zero_and_nan_payloads_survive():
    w = torch.tensor([[0.0, -0.0, 1.0], [float("inf"), 0.0, float("-inf")]])
    nan_bits = torch.tensor([0x7FC01234], dtype=torch.int32).view(torch.float32)   # a NaN with a payload
    w[1, 1] = nan_bits[0]
    for fmt in FORMATS[1:]:
        s = build(fmt, w)
        assert s.nnz == 4                                      # -0.0 is not stored; NaN and ±inf are
        back = s.to_dense()
        assert bits(back)[0, 1] == 0                           # -0.0 comes back as +0.0
        assert bits(back)[1, 1] == 0x7FC01234
        assert torch.equal(bits(back), bits(zero_is_plus_zero(w)))


def test_coo_and_csr_arrays_equal_torch_sparse():
    """The hand-built arrays hold the same indices and values as torch's to_sparse() / to_sparse_csr()."""
    w = random_matrix(30, 70, 0.2, seed=5)
    coo, ref = COO.from_dense(w), w.to_sparse()
    assert torch.equal(torch.stack([coo.rows.long(), coo.cols.long()]), ref.indices())
    assert torch.equal(coo.values, ref.values())
    csr, ref = CSR.from_dense(w), w.to_sparse_csr()
    assert torch.equal(csr.crow.long(), ref.crow_indices()) and torch.equal(csr.cols.long(), ref.col_indices())
    assert torch.equal(csr.values, ref.values())


def test_torch_sparse_bytes_use_int64_indices():
    w = random_matrix(64, 96, 0.1, seed=6)
    nnz = int((w != 0).sum())
    assert torch_sparse_bytes(w.to_sparse()) == coo_bytes(nnz, 4, 8) == format_bytes("coo", w, index_bytes=8)
    assert torch_sparse_bytes(w.to_sparse_csr()) == csr_bytes(64, nnz, 4, 8) == format_bytes("csr", w, index_bytes=8)
    assert torch_sparse_bytes(w.to_sparse_csc()) == csr_bytes(96, nnz, 4, 8)
    assert torch_sparse_bytes(w) == dense_bytes(w.shape) == 64 * 96 * 4
    # to_sparse_csr() keeps its column indices as a view into the 2 x nnz index buffer of a COO tensor: 8·nnz more
    t = w.to_sparse_csr()
    held = serialized_bytes([t.crow_indices(), t.col_indices(), t.values()])
    assert torch_sparse_bytes(t, whole_storage=True) == held == csr_bytes(64, nnz, 4, 8) + 8 * nnz
    compact = torch.sparse_csr_tensor(t.crow_indices(), t.col_indices().clone(), t.values(), t.shape)
    assert torch_sparse_bytes(compact, whole_storage=True) == torch_sparse_bytes(compact) == csr_bytes(64, nnz, 4, 8)
    with pytest.raises(TypeError, match="layout"):
        torch_sparse_bytes(w.to_sparse_bsr((2, 2)))


def test_break_even_formulas():
    assert break_even_density("coo", 128, 512) == pytest.approx(1 / 3)            # V / (V + 2I) = 4 / 12
    assert break_even_density("coo", 128, 512, index_bytes=8) == pytest.approx(0.2)
    assert break_even_density("bitmap", 128, 512) == pytest.approx(1 - 1 / 32)     # N divisible by 8
    assert break_even_density("relative", 128, 512, gap_bits=4) == pytest.approx(8 / 9)
    assert break_even_density("relative", 128, 512, gap_bits=8) == pytest.approx(0.8)
    N = 128 * 512
    assert break_even_density("csr", 128, 512) == pytest.approx((4 * N - 129 * 4) / (8 * N))
    assert break_even_density("csr", 1, 1, value_bytes=1, index_bytes=8) == 0.0      # never saves: clipped to 0
    assert csr_bytes(128, 1000, 4, 4) == 1000 * 8 + 129 * 4


@pytest.mark.parametrize("fmt", ["coo", "csr", "bitmap"])
@pytest.mark.parametrize("index_bytes", [2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_rows, n_cols", [(40, 64), (7, 13)])
def test_break_even_is_exact_for_coo_csr_bitmap(fmt, index_bytes, dtype, n_rows, n_cols):
    N = n_rows * n_cols
    vb = dtype.itemsize
    d = break_even_density(fmt, n_rows, n_cols, value_bytes=vb, index_bytes=index_bytes)
    dense = dense_bytes((n_rows, n_cols), vb)
    at = round(d * N, 6)                     # the nnz where the bytes are equal (rounding off float error)
    for nnz, smaller in [(math.ceil(at) - 1, True), (math.floor(at) + 1, False)]:
        w = torch.zeros(N, dtype=dtype)
        w[torch.randperm(N, generator=torch.Generator().manual_seed(nnz))[:nnz]] = 1.5
        w = w.view(n_rows, n_cols)
        nbytes = build(fmt, w, index_bytes=index_bytes).nbytes
        assert (nbytes < dense) == smaller, (nnz, nbytes, dense)


@pytest.mark.parametrize("gap_bits", [4, 8])
def test_break_even_of_relative_index_is_close(gap_bits):
    """The no-filler model is right near break-even: 2 points of density either side decide the comparison."""
    d = break_even_density("relative", 128, 512, gap_bits=gap_bits)
    dense = dense_bytes((128, 512))
    assert RelativeIndex.from_dense(random_matrix(128, 512, d - 0.02, seed=7), gap_bits).nbytes < dense
    assert RelativeIndex.from_dense(random_matrix(128, 512, d + 0.02, seed=8), gap_bits).nbytes > dense


@pytest.mark.parametrize("gap_bits, density", [(4, 1 / 8), (4, 1 / 16), (4, 1 / 32), (8, 1 / 256), (8, 1 / 512)])
def test_expected_fillers_match_a_random_matrix(gap_bits, density):
    w = random_matrix(256, 1024, density, seed=9)
    measured = relative_fillers(w, gap_bits) / int((w != 0).sum())
    assert measured == pytest.approx(expected_fillers_per_nonzero(density, gap_bits), rel=0.15, abs=0.002)


def test_fillers_appear_only_when_the_average_gap_passes_2_to_the_gap_bits():
    assert expected_fillers_per_nonzero(0.5, 4) < 1e-4            # average gap 2, far below 16
    assert expected_fillers_per_nonzero(1 / 16, 4) > 0.5          # average gap 16 = 2**4
    assert expected_fillers_per_nonzero(1 / 64, 4) > 3
    assert relative_fillers(random_matrix(128, 512, 0.5, seed=10), 4) == 0


def test_format_bytes_from_shape_matches_the_matrix():
    w = random_matrix(33, 65, 0.25, seed=11)
    nnz = int((w != 0).sum())
    for fmt in ("dense", "coo", "csr", "bitmap"):
        assert format_bytes(fmt, w) == format_bytes(fmt, (33, 65), nnz)
    assert format_bytes("dense", w.half()) == 33 * 65 * 2
    with pytest.raises(ValueError, match="relative.*needs the matrix"):
        format_bytes("relative", (33, 65), nnz)
    with pytest.raises(ValueError, match="nnz is required"):
        format_bytes("csr", (33, 65))


def test_smallest_index_bytes():
    assert COO.from_dense(torch.ones(2, 256), index_bytes="smallest").index_bytes == 1     # largest index 255
    assert COO.from_dense(torch.ones(2, 257), index_bytes="smallest").index_bytes == 2
    assert CSR.from_dense(torch.ones(1, 255), index_bytes="smallest").index_bytes == 1     # row pointer 255
    assert CSR.from_dense(torch.ones(2, 200), index_bytes="smallest").index_bytes == 2     # row pointer 400
    assert CSR.from_dense(torch.ones(1, 65536), index_bytes="smallest").index_bytes == 4


def test_bad_input_gives_clear_errors():
    w = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"2-D matrix.*\(2, 3, 4\)"):
        CSR.from_dense(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="2-D matrix"):
        Bitmap.from_dense(torch.zeros(5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        COO.from_dense([[1.0, 2.0]])
    with pytest.raises(TypeError, match="dense"):
        CSR.from_dense(w.to_sparse())
    with pytest.raises(TypeError, match="dtype"):
        COO.from_dense(w > 0)
    with pytest.raises(ValueError, match=r"gap_bits=5.*\(4, 8\)"):
        RelativeIndex.from_dense(w, gap_bits=5)
    for bad in (3, 4.0, [4], "int32", True):
        with pytest.raises(ValueError, match=r"index_bytes=.*use one of \(1, 2, 4, 8\)"):
            COO.from_dense(w, index_bytes=bad)
    for bad in (5, 4.0, "4", None):
        with pytest.raises(ValueError, match=r"gap_bits=.*\(4, 8\)"):
            RelativeIndex.from_dense(w, gap_bits=bad)
    with pytest.raises(ValueError, match=r"index_bytes=1 is too small.*300.*index_bytes=2"):
        COO.from_dense(torch.ones(2, 301), index_bytes=1)
    with pytest.raises(ValueError, match=r"index_bytes=1 is too small.*row pointer.*400"):
        CSR.from_dense(torch.ones(2, 200), index_bytes=1)
    with pytest.raises(ValueError, match=r"fmt='ell'.*coo"):
        format_bytes("ell", w)
    with pytest.raises(ValueError, match=r"fmt='dense'"):
        break_even_density("dense", 4, 5)
    with pytest.raises(ValueError, match="n_rows"):
        break_even_density("csr", 0, 5)
    with pytest.raises(ValueError, match="last dimension must be n_cols=5"):
        COO.from_dense(w).matmul(torch.randn(3, 4))
    with pytest.raises(ValueError, match="nnz=-1"):
        csr_bytes(4, -1)
    with pytest.raises(TypeError, match="nnz=2.5"):
        csr_bytes(4, 2.5)
    with pytest.raises(ValueError, match="density"):
        expected_fillers_per_nonzero(0.0)
    assert sparse.FORMATS == ("dense", "coo", "csr", "bitmap", "relative")
