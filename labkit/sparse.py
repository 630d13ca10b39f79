"""Sparse storage of a pruned weight matrix: the bytes each format really takes, and when it saves any.

Pruning sets weights to zero, but a zero in a dense tensor still costs `value_bytes`. Memory is only saved when
the matrix is stored in a sparse format, and every sparse format pays for *where* the nonzeros are:

    format    stores (w: n_rows x n_cols, nnz nonzeros)            bytes (V = value_bytes, I = index_bytes)
    dense     every value                                           n_rows·n_cols·V
    coo       (row, col, value) per nonzero                         nnz·(2I + V)
    csr       row pointers (n_rows+1), then (col, value) per        (n_rows+1)·I + nnz·(I + V)
              nonzero
    bitmap    one bit per position (packed 8 to a uint8 byte),      ceil(n_rows·n_cols / 8) + nnz·V
              then the nonzero values
    relative  per entry: the gap to the previous entry in gap_bits  n_entries·V + ceil(n_entries·gap_bits / 8)
              (4 or 8) and its value; n_entries = nnz + fillers

`relative` is the relative index of "Deep Compression" (Han, Mao and Dally, ICLR 2016): instead of a column number,
store how many zeros were skipped since the previous entry, in a few bits. Here the whole matrix is ONE stream,
scanned row-major over the flattened matrix (gaps run across row ends; there are no row pointers — the paper kept
CSR/CSC pointers beside its relative indices, so this is the smallest version of the idea). A gap of `skip` zeros
must fit in gap_bits, i.e. skip <= 2**gap_bits - 1; a longer run of zeros gets a *filler* entry: an explicit zero
stored 2**gap_bits positions after the previous entry. The fillers are counted in the bytes, exactly.

Conventions, the same in every format:
- "Nonzero" means `w != 0`: NaN and ±inf are stored (and come back bit for bit); -0.0 is a zero (as for pruning
  and for `torch.Tensor.to_sparse`), so it is not stored and comes back as +0.0. Everything else roundtrips bit for bit.
- Index arrays are UNSIGNED integers of `index_bytes` bytes (uint8, uint16, uint32; 8 bytes is int64, torch's
  index type), because an index is never negative: 2 bytes address 65,536 columns, not 32,768. The width must hold
  every index the format stores (COO: row and column numbers; CSR: column numbers and the row pointers, which
  reach nnz) — a clear error otherwise. `index_bytes="smallest"` picks the narrowest that fits. Default: 4 bytes.
- Values keep the matrix's dtype (float32: 4 bytes; bfloat16: 2; ...).
- `.nbytes` is the exact size of the arrays `.arrays()` returns (tested against `torch.save`'s stored bytes).
  The shape and dtype are a few bytes of metadata that every format, dense included, needs; they are not counted.

`break_even_density` gives, per format, the density below which it takes fewer bytes than dense. For float32
values: COO 1/3 with 4-byte indices, CSR about 1/2 (2/3 with 2-byte indices), bitmap 31/32, relative index 8/9
(4-bit gaps). PyTorch's own sparse tensors use int64 indices (`torch_sparse_bytes`), which moves CSR's break-even
down to about 1/3 and COO's to 1/5 — and a CSR tensor made by `.to_sparse_csr()` from a dense one still holds its
COO row indices (see `torch_sparse_bytes(whole_storage=True)`): COO's bytes plus the row pointers.

`matmul_speed` measures what the storage does to speed on this CPU (torch.sparse CSR vs dense), which is a different
question from bytes: fewer multiply-adds only pay off well below the densities where storage already does.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, ClassVar

import torch
from torch import Tensor

__all__ = [
    "FORMATS", "GAP_BITS", "INDEX_DTYPES", "COO", "CSR", "Bitmap", "RelativeIndex", "FORMAT_CLASSES",
    "dense_bytes", "coo_bytes", "csr_bytes", "bitmap_bytes", "relative_bytes", "format_bytes",
    "break_even_density", "expected_fillers_per_nonzero", "smallest_index_bytes", "relative_fillers",
    "torch_sparse_bytes", "serialized_bytes", "matmul_speed", "sparse_faster_below", "semi_structured_speed",
]

FORMATS = ("dense", "coo", "csr", "bitmap", "relative")
GAP_BITS = (4, 8)
#: The index dtype for each width. Unsigned where torch has it; 8 bytes is int64 (torch's own index type).
INDEX_DTYPES: dict[int, torch.dtype] = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32, 8: torch.int64}


# ---------------------------------------------------------------------------------------------
# Checking arguments
# ---------------------------------------------------------------------------------------------

def _check_count(value, name: str, minimum: int = 0) -> int:
    """`value` as an int >= minimum; TypeError/ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _check_matrix(w, name: str = "w") -> Tensor:
    """`w` as a detached 2-D dense tensor of numbers; a clear error for anything else."""
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (a 2-D weight matrix), got {type(w).__name__}")
    if w.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {w.layout}; call .to_dense() first")
    if w.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix (n_rows, n_cols), got shape {tuple(w.shape)}")
    if w.dtype == torch.bool or w.dtype.is_complex:
        raise TypeError(f"{name}.dtype={w.dtype} is not supported; allowed: real floating point or integer dtypes")
    return w.detach()


def _check_gap_bits(gap_bits) -> int:
    if isinstance(gap_bits, bool) or not isinstance(gap_bits, numbers.Integral) or gap_bits not in GAP_BITS:
        raise ValueError(f"gap_bits={gap_bits!r} is not allowed; the relative index stores gaps in one of "
                         f"{GAP_BITS} bits")
    return int(gap_bits)


def _index_limit(index_bytes: int) -> int:
    """The largest index an index array of `index_bytes` bytes holds."""
    return 2 ** 63 - 1 if index_bytes == 8 else 2 ** (8 * index_bytes) - 1


def smallest_index_bytes(largest_index: int) -> int:
    """The narrowest index width in INDEX_DTYPES (bytes) that holds `largest_index`."""
    largest_index = _check_count(largest_index, "largest_index")
    for nbytes in INDEX_DTYPES:
        if largest_index <= _index_limit(nbytes):
            return nbytes
    raise ValueError(f"largest_index={largest_index} does not fit even in int64")


def _resolve_index_bytes(index_bytes, largest_index: int, what: str) -> int:
    """`index_bytes` checked (1, 2, 4, 8 or "smallest") and wide enough for `largest_index` (described by `what`)."""
    if isinstance(index_bytes, str) and index_bytes == "smallest":
        return smallest_index_bytes(largest_index)
    allowed = isinstance(index_bytes, numbers.Integral) and not isinstance(index_bytes, bool)
    if not allowed or index_bytes not in INDEX_DTYPES:
        raise ValueError(f"index_bytes={index_bytes!r} is not allowed; use one of {tuple(INDEX_DTYPES)} "
                         "(bytes per index) or 'smallest'")
    if largest_index > _index_limit(index_bytes):
        raise ValueError(f"index_bytes={index_bytes} is too small: {what} reaches {largest_index}, more than the "
                         f"{_index_limit(index_bytes)} a {INDEX_DTYPES[index_bytes]} holds; use index_bytes="
                         f"{smallest_index_bytes(largest_index)} or 'smallest'")
    return int(index_bytes)


def _as_index(t: Tensor, index_bytes: int) -> Tensor:
    """A compact copy of `t` in the index dtype (never a view: a view would keep, and save, its whole storage)."""
    return t.to(INDEX_DTYPES[index_bytes]).clone(memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# Byte counts by formula
# ---------------------------------------------------------------------------------------------

def dense_bytes(shape, value_bytes: int = 4) -> int:
    """Bytes of a dense matrix of `shape`: n_rows·n_cols·value_bytes."""
    if isinstance(shape, Tensor) or not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"shape={shape!r} must be (n_rows, n_cols)")
    n_rows, n_cols = _check_count(shape[0], "n_rows"), _check_count(shape[1], "n_cols")
    return n_rows * n_cols * _check_count(value_bytes, "value_bytes", 1)


def coo_bytes(nnz: int, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes of COO storage: a row index, a column index and a value per nonzero."""
    nnz = _check_count(nnz, "nnz")
    return nnz * (2 * _check_count(index_bytes, "index_bytes", 1) + _check_count(value_bytes, "value_bytes", 1))


def csr_bytes(n_rows: int, nnz: int, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes of CSR storage: nnz·(value_bytes + index_bytes) + (n_rows + 1)·index_bytes."""
    n_rows, nnz = _check_count(n_rows, "n_rows"), _check_count(nnz, "nnz")
    value_bytes, index_bytes = _check_count(value_bytes, "value_bytes", 1), _check_count(index_bytes, "index_bytes", 1)
    return nnz * (value_bytes + index_bytes) + (n_rows + 1) * index_bytes


def bitmap_bytes(n_rows: int, n_cols: int, nnz: int, value_bytes: int = 4) -> int:
    """Bytes of bitmap storage: one bit per position, packed into whole bytes, plus the nonzero values."""
    n_rows, n_cols, nnz = _check_count(n_rows, "n_rows"), _check_count(n_cols, "n_cols"), _check_count(nnz, "nnz")
    if nnz > n_rows * n_cols:
        raise ValueError(f"nnz={nnz} is more than the {n_rows}x{n_cols} matrix has positions")
    return math.ceil(n_rows * n_cols / 8) + nnz * _check_count(value_bytes, "value_bytes", 1)


def relative_bytes(n_entries: int, value_bytes: int = 4, gap_bits: int = 4) -> int:
    """Bytes of a relative index with `n_entries` entries (nonzeros + fillers): values, then packed gaps."""
    n_entries = _check_count(n_entries, "n_entries")
    value_bytes, gap_bits = _check_count(value_bytes, "value_bytes", 1), _check_gap_bits(gap_bits)
    return n_entries * value_bytes + math.ceil(n_entries * gap_bits / 8)


def _nonzero_positions(w: Tensor) -> Tensor:
    """Row-major positions (int64) of the nonzeros of a 2-D `w` in its flattened form."""
    return (w != 0).flatten().nonzero().flatten()


def relative_fillers(w: Tensor, gap_bits: int = 4) -> int:
    """How many filler zeros the relative index of `w` needs (a run of `skip` zeros costs skip // 2**gap_bits)."""
    w, gap_bits = _check_matrix(w), _check_gap_bits(gap_bits)
    skips = _skips(_nonzero_positions(w))
    return int((skips // 2 ** gap_bits).sum())


def _skips(positions: Tensor) -> Tensor:
    """Zeros skipped before each nonzero: positions[i] - positions[i-1] - 1, with position -1 before the first."""
    return torch.diff(positions, prepend=positions.new_tensor([-1])) - 1


def format_bytes(fmt: str, w_or_shape, nnz: int | None = None, *, value_bytes: int | None = None,
                 index_bytes: int | str = 4, gap_bits: int = 4) -> int:
    """Exact bytes of storing a matrix in `fmt` (one of FORMATS), from the matrix or from (shape, nnz).

    format_bytes("csr", w) counts w's nonzeros and takes value_bytes from its dtype; the result equals
    CSR.from_dense(w).nbytes. format_bytes("csr", (n_rows, n_cols), nnz) is the formula (value_bytes
    default 4). The relative index needs the matrix itself: its fillers depend on where the nonzeros are.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r} is not a storage format; allowed: {FORMATS}")
    if isinstance(w_or_shape, Tensor):
        w = _check_matrix(w_or_shape, "w_or_shape")
        if nnz is not None or value_bytes is not None:
            raise ValueError("pass nnz and value_bytes only with a shape; with a matrix they are read from it")
        (n_rows, n_cols), nnz, value_bytes = w.shape, int((w != 0).sum()), w.element_size()
    else:
        n_rows, n_cols = _shape_of(w_or_shape)
        if nnz is None:
            raise ValueError(f"nnz is required with a shape (w_or_shape={tuple(w_or_shape)!r})")
        nnz = _check_count(nnz, "nnz")
        if nnz > n_rows * n_cols:
            raise ValueError(f"nnz={nnz} is more than the {n_rows}x{n_cols} matrix has positions")
        value_bytes = 4 if value_bytes is None else _check_count(value_bytes, "value_bytes", 1)
        if fmt == "relative":
            raise ValueError("fmt='relative' needs the matrix, not its shape: the number of filler zeros depends on "
                             "where the nonzeros are (see expected_fillers_per_nonzero for a model)")
    if fmt == "dense":
        return n_rows * n_cols * value_bytes
    if fmt == "coo":
        ib = _resolve_index_bytes(index_bytes, max(n_rows - 1, n_cols - 1, 0), "a row or column index")
        return coo_bytes(nnz, value_bytes, ib)
    if fmt == "csr":
        ib = _resolve_index_bytes(index_bytes, max(n_cols - 1, nnz), "a column index or row pointer (up to nnz)")
        return csr_bytes(n_rows, nnz, value_bytes, ib)
    if fmt == "bitmap":
        return bitmap_bytes(n_rows, n_cols, nnz, value_bytes)
    return relative_bytes(nnz + relative_fillers(w, gap_bits), value_bytes, gap_bits)


def _shape_of(shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"w_or_shape={shape!r} must be a 2-D tensor or a shape (n_rows, n_cols)")
    return _check_count(shape[0], "n_rows"), _check_count(shape[1], "n_cols")


# ---------------------------------------------------------------------------------------------
# Break-even density: below it, the format takes fewer bytes than dense
# ---------------------------------------------------------------------------------------------

def break_even_density(fmt: str, n_rows: int, n_cols: int, value_bytes: int = 4, index_bytes: int = 4,
                       gap_bits: int = 4) -> float:
    """The density nnz / (n_rows·n_cols) at which `fmt` takes exactly as many bytes as dense (fewer below it).

    Setting each format's bytes equal to dense's, N = n_rows·n_cols, V = value_bytes, I = index_bytes:
        coo:      nnz·(2I + V) = N·V               ->  d = V / (V + 2I)
        csr:      nnz·(I + V) + (n_rows+1)·I = N·V  ->  d = (N·V - (n_rows+1)·I) / (N·(V + I))
        bitmap:   ceil(N/8) + nnz·V = N·V           ->  d = 1 - ceil(N/8) / (N·V)        (about 1 - 1/(8V))
        relative: nnz·(V + gap_bits/8) = N·V        ->  d = V / (V + gap_bits/8)
    The relative index's model assumes NO fillers (true near its break-even, where the average run of zeros is
    far shorter than 2**gap_bits; see expected_fillers_per_nonzero) and ignores the half byte of an odd count.
    A result is clipped to [0, 1]: 0 means the format never saves bytes for this shape.
    """
    if fmt not in FORMATS[1:]:
        raise ValueError(f"fmt={fmt!r} has no break-even density; allowed: {FORMATS[1:]}")
    n_rows, n_cols = _check_count(n_rows, "n_rows", 1), _check_count(n_cols, "n_cols", 1)
    V, I = _check_count(value_bytes, "value_bytes", 1), _check_count(index_bytes, "index_bytes", 1)
    gap_bits = _check_gap_bits(gap_bits)
    N = n_rows * n_cols
    if fmt == "coo":
        d = V / (V + 2 * I)
    elif fmt == "csr":
        d = (N * V - (n_rows + 1) * I) / (N * (V + I))
    elif fmt == "bitmap":
        d = 1 - math.ceil(N / 8) / (N * V)
    else:
        d = V / (V + gap_bits / 8)
    return min(1.0, max(0.0, d))


def expected_fillers_per_nonzero(density: float, gap_bits: int = 4) -> float:
    """Expected filler zeros per nonzero of a relative index when each position is nonzero independently.

    The zeros skipped before a nonzero are geometric: P(skip >= k) = (1 - density)**k, and a run of `skip` zeros
    needs skip // 2**gap_bits fillers, so the expectation is sum over k >= 1 of q**k = q / (1 - q), with
    q = (1 - density)**(2**gap_bits).
    It is negligible while the average gap 1/density is well below 2**gap_bits and grows quickly past it.
    """
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise ValueError(f"density={density!r} must be a number in (0, 1]")
    q = (1 - float(density)) ** (2 ** _check_gap_bits(gap_bits))
    return q / (1 - q)


# ---------------------------------------------------------------------------------------------
# The formats: real tensors, exact bytes, a lossless roundtrip and a matmul
# ---------------------------------------------------------------------------------------------

class SparseMatrix:
    """What every format shares: shape, dtype, nbytes = sum of its arrays' bytes, to_dense() and matmul()."""

    name: ClassVar[str] = ""
    shape: tuple[int, int]
    dtype: torch.dtype

    def arrays(self) -> dict[str, Tensor]:
        """The tensors this format stores, by name (their byte sizes add up to .nbytes)."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored arrays, by this format's formula."""
        raise NotImplementedError

    def coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, cols, values) of the stored entries in row-major order; rows and cols as int64."""
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        """Nonzero weights stored (fillers of the relative index are not counted)."""
        return int((self.coordinates()[2] != 0).sum())

    @property
    def density(self) -> float:
        """nnz / (n_rows·n_cols); 0.0 for an empty matrix."""
        numel = self.shape[0] * self.shape[1]
        return self.nnz / numel if numel else 0.0

    def to_dense(self) -> Tensor:
        """The dense (n_rows, n_cols) matrix, bit for bit what from_dense got (-0.0 comes back as +0.0)."""
        rows, cols, values = self.coordinates()
        out = torch.zeros(self.shape, dtype=self.dtype, device=values.device)
        out[rows, cols] = values
        return out

    def matmul(self, x: Tensor) -> Tensor:
        """x @ w.T from the stored entries only (nn.Linear without bias): (..., n_cols) -> (..., n_rows).

        Zeros are skipped, so where x holds ±inf or NaN a pruned weight contributes 0 (dense gives NaN for 0·inf).
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has shape {tuple(x.shape)}; its last dimension must be n_cols={self.shape[1]}")
        rows, cols, values = self.coordinates()
        dtype = torch.promote_types(x.dtype, self.dtype)
        products = x[..., cols].to(dtype) * values.to(dtype)          # (..., nnz): each stored weight times its input
        out = torch.zeros(*x.shape[:-1], self.shape[0], dtype=dtype, device=x.device)
        return out.index_add_(-1, rows, products)                       # summed into its output row

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, nnz={self.nnz}, "
                f"nbytes={self.nbytes})")


class COO(SparseMatrix):
    """Coordinate format: for every nonzero its row index, column index and value."""

    name = "coo"

    def __init__(self, rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], index_bytes: int):
        self.rows, self.cols, self.values = rows, cols, values
        self.shape, self.dtype, self.index_bytes = tuple(shape), values.dtype, index_bytes

    @classmethod
    def from_dense(cls, w: Tensor, index_bytes: int | str = 4) -> "COO":
        """COO storage of the 2-D matrix `w` with `index_bytes`-byte indices (1, 2, 4, 8 or "smallest")."""
        w = _check_matrix(w)
        ib = _resolve_index_bytes(index_bytes, max(w.shape[0] - 1, w.shape[1] - 1, 0), "a row or column index")
        rows, cols = (w != 0).nonzero(as_tuple=True)                   # row-major order
        return cls(_as_index(rows, ib), _as_index(cols, ib), w[rows, cols].clone(), w.shape, ib)

    def arrays(self) -> dict[str, Tensor]:
        return {"rows": self.rows, "cols": self.cols, "values": self.values}

    @property
    def nbytes(self) -> int:
        return coo_bytes(len(self.values), self.values.element_size(), self.index_bytes)

    def coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.rows.long(), self.cols.long(), self.values


class CSR(SparseMatrix):
    """Compressed sparse rows: row pointers (row r's entries are crow[r]:crow[r+1]), column indices, values."""

    name = "csr"

    def __init__(self, crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], index_bytes: int):
        self.crow, self.cols, self.values = crow, cols, values
        self.shape, self.dtype, self.index_bytes = tuple(shape), values.dtype, index_bytes

    @classmethod
    def from_dense(cls, w: Tensor, index_bytes: int | str = 4) -> "CSR":
        """CSR storage of the 2-D matrix `w` with `index_bytes`-byte column indices and row pointers."""
        w = _check_matrix(w)
        nonzero = w != 0
        nnz = int(nonzero.sum())
        ib = _resolve_index_bytes(index_bytes, max(w.shape[1] - 1, nnz), "a column index or row pointer (up to nnz)")
        rows, cols = nonzero.nonzero(as_tuple=True)
        crow = torch.cat([torch.zeros(1, dtype=torch.long), nonzero.sum(dim=1).cumsum(0)])
        return cls(_as_index(crow, ib), _as_index(cols, ib), w[rows, cols].clone(), w.shape, ib)

    def arrays(self) -> dict[str, Tensor]:
        return {"crow": self.crow, "cols": self.cols, "values": self.values}

    @property
    def nbytes(self) -> int:
        return csr_bytes(self.shape[0], len(self.values), self.values.element_size(), self.index_bytes)

    def coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        per_row = torch.diff(self.crow.long())
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), per_row)
        return rows, self.cols.long(), self.values


def _unflatten(positions: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """Row and column of each row-major flat position."""
    if n_cols == 0:
        return positions, positions
    return positions // n_cols, positions % n_cols


class Bitmap(SparseMatrix):
    """One bit per position (1 = nonzero), packed 8 to a uint8 byte, and the nonzero values in row-major order.

    Packing: flat position p is bit (p % 8) of byte p // 8, least significant bit first (numpy's
    packbits(bitorder="little")); the last byte is padded with zero bits.
    """

    name = "bitmap"

    def __init__(self, bits: Tensor, values: Tensor, shape: tuple[int, int]):
        self.bits, self.values = bits, values
        self.shape, self.dtype = tuple(shape), values.dtype

    @classmethod
    def from_dense(cls, w: Tensor) -> "Bitmap":
        """Bitmap storage of the 2-D matrix `w`."""
        w = _check_matrix(w)
        flat = (w != 0).flatten()
        return cls(pack_bits(flat), w.flatten()[flat].clone(), w.shape)

    def arrays(self) -> dict[str, Tensor]:
        return {"bits": self.bits, "values": self.values}

    @property
    def nbytes(self) -> int:
        return bitmap_bytes(*self.shape, len(self.values), self.values.element_size())

    def coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        flat = unpack_bits(self.bits, self.shape[0] * self.shape[1])
        return (*_unflatten(flat.nonzero().flatten(), self.shape[1]), self.values)


def pack_bits(flags: Tensor) -> Tensor:
    """A 1-D bool tensor packed into uint8 bytes, 8 flags each, least significant bit first."""
    padded = torch.zeros(math.ceil(len(flags) / 8) * 8, dtype=torch.uint8)
    padded[:len(flags)] = flags
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, count: int) -> Tensor:
    """The first `count` flags (bool) of bytes made by pack_bits."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed.unsqueeze(1) >> shifts) & 1).flatten()[:count].bool()


class RelativeIndex(SparseMatrix):
    """Deep Compression's relative index: per entry, the zeros skipped since the previous entry (in gap_bits) and
    a value; a run of zeros too long for gap_bits gets filler entries (explicit zeros). Row-major, one stream.

    4-bit gaps are packed two per byte (the first in the low nibble); 8-bit gaps are one uint8 each.
    """

    name = "relative"

    def __init__(self, gaps: Tensor, values: Tensor, shape: tuple[int, int], gap_bits: int):
        self.gaps, self.values = gaps, values
        self.shape, self.dtype, self.gap_bits = tuple(shape), values.dtype, gap_bits

    @classmethod
    def from_dense(cls, w: Tensor, gap_bits: int = 4) -> "RelativeIndex":
        """Relative-index storage of the 2-D matrix `w` with `gap_bits`-bit gaps (4 or 8)."""
        w, gap_bits = _check_matrix(w), _check_gap_bits(gap_bits)
        span = 2 ** gap_bits                        # positions one filler covers: 2**gap_bits - 1 zeros + itself
        positions = _nonzero_positions(w)
        skips = _skips(positions)
        fillers = skips // span                      # filler entries before each nonzero
        last = torch.cumsum(fillers + 1, 0) - 1      # where each nonzero's own entry lands
        n_entries = len(positions) + int(fillers.sum())
        gaps = torch.full((n_entries,), span - 1, dtype=torch.long)   # fillers skip the most a gap can say
        gaps[last] = skips - fillers * span                            # the rest of the run, < span
        values = torch.zeros(n_entries, dtype=w.dtype)
        values[last] = w.flatten()[positions]
        return cls(_pack_gaps(gaps, gap_bits), values, w.shape, gap_bits)

    @property
    def n_fillers(self) -> int:
        """Filler zeros stored (entries that are not nonzero weights)."""
        return len(self.values) - self.nnz

    def arrays(self) -> dict[str, Tensor]:
        return {"gaps": self.gaps, "values": self.values}

    @property
    def nbytes(self) -> int:
        return relative_bytes(len(self.values), self.values.element_size(), self.gap_bits)

    def coordinates(self) -> tuple[Tensor, Tensor, Tensor]:
        gaps = _unpack_gaps(self.gaps, self.gap_bits, len(self.values))
        positions = torch.cumsum(gaps + 1, 0) - 1   # each entry sits skip + 1 positions after the previous one
        keep = self.values != 0                     # fillers are the stored zeros
        return (*_unflatten(positions[keep], self.shape[1]), self.values[keep])


def _pack_gaps(gaps: Tensor, gap_bits: int) -> Tensor:
    """Gaps (each < 2**gap_bits) as uint8 bytes: one per byte for 8 bits, two per byte for 4 (low nibble first)."""
    if gap_bits == 8:
        return gaps.to(torch.uint8)
    padded = torch.zeros(len(gaps) + len(gaps) % 2, dtype=torch.long)
    padded[:len(gaps)] = gaps
    return (padded[0::2] | (padded[1::2] << 4)).to(torch.uint8)


def _unpack_gaps(packed: Tensor, gap_bits: int, count: int) -> Tensor:
    """The first `count` gaps (int64) of bytes made by _pack_gaps."""
    as_long = packed.long()
    if gap_bits == 8:
        return as_long[:count]
    return torch.stack([as_long & 15, as_long >> 4], dim=1).flatten()[:count]


FORMAT_CLASSES: dict[str, type[SparseMatrix]] = {"coo": COO, "csr": CSR, "bitmap": Bitmap, "relative": RelativeIndex}


# ---------------------------------------------------------------------------------------------
# What PyTorch's own sparse tensors take, and what torch.save writes
# ---------------------------------------------------------------------------------------------

def torch_sparse_bytes(t: Tensor, whole_storage: bool = False) -> int:
    """Bytes of a torch tensor's arrays: values + int64 indices for sparse COO/CSR/CSC, numel·itemsize if dense.

    whole_storage=True counts the storages those arrays keep alive instead. They differ for a CSR/CSC tensor made
    by `.to_sparse_csr()` / `.to_sparse_csc()` from a dense one: its column (row) indices are a view into the
    2 x nnz int64 index buffer of the COO tensor it was converted through, so it holds 8·nnz bytes more than
    the CSR formula (torch.save writes them too).
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.layout == torch.strided:
        arrays = [t]
    elif t.layout == torch.sparse_coo:
        arrays = [t._indices(), t._values()]
    elif t.layout == torch.sparse_csr:
        arrays = [t.crow_indices(), t.col_indices(), t.values()]
    elif t.layout == torch.sparse_csc:
        arrays = [t.ccol_indices(), t.row_indices(), t.values()]
    else:
        raise TypeError(f"t has layout {t.layout}; allowed: torch.strided, torch.sparse_coo, torch.sparse_csr, "
                        "torch.sparse_csc")
    if not whole_storage:
        return sum(a.nbytes for a in arrays)
    storages = {a.untyped_storage().data_ptr(): a.untyped_storage().nbytes() for a in arrays}
    return sum(storages.values())


def serialized_bytes(arrays: dict[str, Tensor] | list[Tensor]) -> int:
    """Bytes of tensor data torch.save writes for `arrays`: the sizes of the archive's data/ records.

    torch.save writes a zip archive: a pickle describing the tensors, a few small bookkeeping records, and one
    record per storage holding exactly its bytes (a view would drag its whole storage along). Summing those
    records measures what the tensors really occupy, without the pickle or the zip headers and alignment padding.
    """
    import io
    import re
    import zipfile

    buffer = io.BytesIO()
    torch.save(arrays, buffer)
    with zipfile.ZipFile(buffer) as archive:
        return sum(info.file_size for info in archive.infolist() if re.fullmatch(r"[^/]+/data/\d+", info.filename))


# ---------------------------------------------------------------------------------------------
# Speed: does storing fewer numbers make the matmul faster on this CPU? (Measured, never assumed.)
# ---------------------------------------------------------------------------------------------

def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile) of `values`."""
    q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def _calls_per_timing(fn, target_s: float = 0.02) -> int:
    """How many calls of `fn` make one timing last about `target_s` seconds (after a warm-up call)."""
    import time

    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t0, 1e-7)))


def _time_ms(fn, calls: int) -> float:
    """Milliseconds per call of `fn`, averaged over `calls` back-to-back calls."""
    import time

    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1000


def _timing_row(times: dict[str, list[float]], first: str, second: str) -> dict:
    """Median and quartiles of both timings, and of the per-repeat ratio second / first (measured side by side)."""
    row = {}
    for name in (first, second):
        q1, med, q3 = _quartiles(times[name])
        row.update({f"{name}_ms": round(med, 4), f"{name}_ms_q1": round(q1, 4), f"{name}_ms_q3": round(q3, 4)})
    q1, med, q3 = _quartiles([b / a for a, b in zip(times[first], times[second])])
    row.update({"ratio": round(med, 4), "ratio_q1": round(q1, 4), "ratio_q3": round(q3, 4)})
    return row


def _interleaved_times(fns: dict[str, Callable[[], Tensor]], repeats: int, progress: bool,
                       desc: str) -> dict[str, list[float]]:
    """Time every function once per repeat, alternating their order, so a burst of background load hits all."""
    from tqdm.auto import tqdm

    calls = {name: _calls_per_timing(fn) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    names = list(fns)
    for r in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(_time_ms(fns[name], calls[name]))
    return times


def _check_speed_args(shape, batch, repeats, threads) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise ValueError(f"shape={shape!r} must be (n_rows, n_cols)")
    n_rows, n_cols = _check_count(shape[0], "n_rows", 1), _check_count(shape[1], "n_cols", 1)
    _check_count(batch, "batch", 1), _check_count(repeats, "repeats", 1), _check_count(threads, "threads", 1)
    return n_rows, n_cols


def matmul_speed(densities=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0), shape: tuple[int, int] = (1024, 1024),
                 batch: int = 64, repeats: int = 15, threads: int = 1, seed: int = 0,
                 progress: bool = False) -> list[dict]:
    """torch.sparse CSR matmul vs dense matmul of the same pruned matrix, per density: times (ms) and their ratio.

    For each density a random matrix w of `shape` is pruned to that density (random positions) and multiplied
    with x.T (batch columns) as a dense tensor (`w @ x.T`, BLAS) and as `w.to_sparse_csr() @ x.T` (torch.sparse).
    Repeats are interleaved (dense, sparse, then sparse, dense, ...) so background load hits both. Each row has
    the median and quartiles of both times and of the per-repeat ratio sparse / dense (< 1: sparse is faster),
    and `flop_ratio` = nnz / numel, the fraction of the dense multiply-adds the sparse kernel has to do.
    """
    n_rows, n_cols = _check_speed_args(shape, batch, repeats, threads)
    densities = list(densities)
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 < d <= 1:
            raise ValueError(f"densities contains {d!r}; each density must be a number in (0, 1]")
    gen = torch.Generator().manual_seed(seed)
    xt = torch.randn(n_cols, batch, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for d in densities:
            w = torch.randn(n_rows, n_cols, generator=gen) * (torch.rand(n_rows, n_cols, generator=gen) < d)
            w_csr = w.to_sparse_csr()
            fns = {"dense": lambda w=w: torch.mm(w, xt), "sparse": lambda w_csr=w_csr: torch.mm(w_csr, xt)}
            torch.testing.assert_close(fns["sparse"](), fns["dense"](), rtol=1e-4, atol=1e-4)  # same product
            times = _interleaved_times(fns, repeats, progress, f"density {d:g}")
            nnz = int((w != 0).sum())
            rows.append({"density": d, "nnz": nnz, "flop_ratio": round(nnz / w.numel(), 4),
                         **_timing_row(times, "dense", "sparse")})
    finally:
        torch.set_num_threads(before)
    return rows


def sparse_faster_below(rows: list[dict]) -> float | None:
    """The largest measured density up to which sparse was clearly faster: in at least 3 of 4 repeats (ratio_q3 < 1)
    there and at every lower density; None if it was not even at the lowest."""
    best = None
    for row in sorted(rows, key=lambda r: r["density"]):
        if row["ratio_q3"] >= 1:
            break
        best = row["density"]
    return best


def semi_structured_speed(shape: tuple[int, int] = (1024, 1024), batch: int = 64, repeats: int = 15,
                          threads: int = 1, seed: int = 0, progress: bool = False) -> dict:
    """2:4 sparsity on a CPU: a 2:4-masked dense matrix vs the unpruned one (same dense kernel), times in ms.

    Half the weights are zero, but a dense kernel multiplies the zeros too, so the ratio masked / dense is
    about 1. Also runs the same 2:4 matrix as torch.sparse CSR, and tries torch's 2:4 format
    (torch.sparse.to_sparse_semi_structured), recording what it does here (it needs CUDA kernels).
    """
    from labkit.prune import nm_mask

    n_rows, n_cols = _check_speed_args(shape, batch, repeats, threads)
    if n_cols % 4:
        raise ValueError(f"shape={tuple(shape)}: n_cols must be a multiple of 4 for 2:4 sparsity")
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n_rows, n_cols, generator=gen)
    w24 = w * nm_mask(w, 2, 4)
    xt = torch.randn(n_cols, batch, generator=gen)
    try:
        from torch.sparse import to_sparse_semi_structured
        to_sparse_semi_structured(w24)
        torch_says = "converted (a 2:4 semi-structured tensor)"
    except Exception as e:  # on CPU torch raises: only CUDA tensors are supported
        torch_says = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w24_csr = w24.to_sparse_csr()
        fns = {"dense": lambda: torch.mm(w, xt), "masked_2_4": lambda: torch.mm(w24, xt),
               "csr_2_4": lambda: torch.mm(w24_csr, xt)}
        times = _interleaved_times(fns, repeats, progress, "2:4")
    finally:
        torch.set_num_threads(before)
    out = {"shape": list(shape), "batch": batch, "density": float((w24 != 0).float().mean()),
           **_timing_row(times, "dense", "masked_2_4")}
    csr = _timing_row(times, "dense", "csr_2_4")
    out.update({k: v for k, v in csr.items() if k.startswith("csr_2_4")})
    out.update({"csr_ratio": csr["ratio"], "csr_ratio_q1": csr["ratio_q1"], "csr_ratio_q3": csr["ratio_q3"],
                "to_sparse_semi_structured": torch_says})
    return out
