"""Deep Compression on the zoo model: prune, share weights, index relatively, Huffman-code — each stage's real bytes.

    result = deep_compression(model, sparsity=0.7, bits=4, fine_tune_steps=300, centroid_steps=100)
    pandas.DataFrame(result.stages)      # stage, bytes, ratio, loss, loss_se, perplexity, increase, increase_se
    save_compressed(result, "baby.dc")   # returns the file's bytes == result.stages[-1]["bytes"]
    load_compressed("baby.dc")           # a GPT whose logits equal result.model's exactly (torch.equal)

The pipeline of "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding" (Han, Mao and Dally, ICLR 2016), one stage per row of `result.stages`:

    stage                       what is stored, and so what `bytes` counts (real arrays, exact)
    fp32                        the fp32 file: torch.save(model.state_dict()) into a buffer (its zip folder is
                                "archive", as for a file named archive.pt)
    pruned                      magnitude pruning per matrix (labkit.prune.layer_masks). Each block matrix in CSR
                                (labkit.sparse.CSR, index_bytes="smallest": fp32 values + column indices + row
                                pointers) — pruned-but-dense fp32 would be no smaller; everything else fp32
    pruned + fine-tuned         the same storage after labkit.prune.fine_tune (the one training loop; the pruned
                                weights stay exactly zero)
    weight sharing (k-means)    each block matrix's NONZERO weights replaced by the nearest of 2**bits − 1 shared
                                values (k-means per matrix, the paper's linear initialisation; code 0 is kept for
                                zero). Stored as CSR indices + `bits`-bit packed codes + an fp16 codebook. The
                                embeddings (wte, wpe) and lm_head: 8-bit k-means (labkit.quantize.kmeans_quantize),
                                dense uint8 codes + fp16 codebook; the LayerNorm gains: fp16. From this row on, their
                                bytes are in every row
    centroids fine-tuned        the paper's trained quantization: the codes stay, the shared values are trained
                                (the gradient of a shared value is the SUM of its weights' gradients — autograd
                                gives exactly that for codebook[codes]); same storage as the row above
    relative index              CSR's indices replaced by Deep Compression's relative index: per entry the zeros
                                skipped since the previous entry in `gap_bits` bits (labkit.sparse.RelativeIndex's
                                stream: row-major, a filler entry with code 0 when a run is too long), and the
                                entry's `bits`-bit code; layer_storage_bytes(...) is this row's formula per matrix
    Huffman                     the file save_compressed writes: the code and gap streams Huffman-coded per matrix
                                (labkit.compress.huffman_encode: each stream carries its own code-length table and
                                checksum), codebooks and gains fp16, in one uint8 tensor beside a JSON header.
                                `bytes` is that file's size, container (zip, pickle) and header included

The weights are identical from "centroids fine-tuned" (or k-means) on: relative indexing and Huffman coding are
lossless, and the loaded file is checked to give equal weights. Ratios are fp32 file bytes / the row's bytes;
loss is nats/char on the lab's yardstick (labkit.quantize.default_eval_set, lab 05's: 1 window in 16 of the
validation split), `increase` the paired loss rise over fp32 on the same windows with its standard error
(labkit.evaluate.paired_difference), as labs 04 and 05 report it.

Gap bits: 4 (labkit.sparse.GAP_BITS offers 4 or 8). The paper used 5 bits for fully connected layers and 8 for
convolutions; at this model's densities (≥ 0.1) a run of 16+ zeros is rare, so 4-bit gaps need few fillers, and
Huffman coding then spends about the gaps' entropy whatever their width.

Defaults (sparsity 0.7, 3-bit codes, 300 fine-tuning steps at lr 1e-3, 100 centroid steps at lr 1e-4) come from
measuring the trade-off on the zoo model: the smallest file whose perplexity rise stays clearly below the lab's
5% bound within the notebook's time budget. Fewer fine-tuning steps, or lr 3e-4, left the pruned model too far
behind; 80% sparsity passed the bound before quantization did. Trained centroids recover part of what k-means
loses at 2 and 3 bits; at 4 bits k-means loses too little for them to change anything measurable.

`pipeline_sweep(model, sparsities, bits, fine_tune_steps, fine_tuned=result)` returns a pandas DataFrame for the
lab's panel, one row per (sparsity, bits, stage), columns: sparsity, bits, stage, bytes, ratio, weights (the
parameters stored: all but the block matrices' zeros), loss, loss_se, perplexity, increase, increase_se (cached
with labkit.data.cached_results; the sparsities pruned iteratively, each fine-tuned model reused for every bits; no
centroid training unless centroid_steps > 0; `fine_tuned` reuses deep_compression's pruned, fine-tuned model for
its sparsity instead of fine-tuning again).

Exercise 2's reference: layer_storage_bytes(n_nonzero, n_fillers, code_bits, gap_bits, codebook_entries,
codebook_value_bytes=2) -> int, the bytes of one matrix in the "relative index" row.

PAPER_RATIOS: the paper's AlexNet figures, keyed by the stage each belongs beside: pruning 9× fewer WEIGHTS
("pruned"; compare with this run's `weights` column, not its bytes), + quantization 27× in bytes with the relative
index ("relative index"), + Huffman coding 35× in bytes ("Huffman"); PAPER_COUNTS says which counts what.
"""
from __future__ import annotations

import copy
import io
import json
import math
import numbers
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from labkit.model import GPT, build_model, model_config_dict

__all__ = [
    "COLUMNS", "PAPER_COUNTS", "PAPER_RATIOS", "STAGES", "CompressionResult", "EncodedModel", "SharedWeight", "decode_model",
    "deep_compression", "encode_model", "fine_tune_centroids", "layer_storage_bytes", "load_compressed",
    "pipeline_sweep", "save_compressed", "shared_weights", "stage_bytes",
]

#: "Deep Compression" (Han, Mao and Dally, ICLR 2016), AlexNet on ImageNet: 240 MB → 6.9 MB, no loss of accuracy.
#: Each figure is keyed by the stage of this pipeline it belongs beside. What each counts (PAPER_COUNTS):
#: pruning's 9× is "9× fewer connections", a count of WEIGHTS (set it beside this run's stored weights, not its
#: bytes: CSR's indices cost bytes the weight count does not see); 27× is the bytes after quantization stored
#: with the relative index (so beside "relative index", not the k-means row); 35× the bytes after Huffman coding.
PAPER_RATIOS = {"source": "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization "
                          "and Huffman Coding (Han, Mao and Dally, ICLR 2016), AlexNet",
                "pruned": 9.0, "relative index": 27.0, "Huffman": 35.0}
PAPER_COUNTS = {"pruned": "weights", "relative index": "bytes", "Huffman": "bytes"}
STAGES = ("fp32", "pruned", "pruned + fine-tuned", "weight sharing (k-means)", "centroids fine-tuned",
          "relative index", "Huffman")
FILE_FORMAT = "labkit.deep_compression/1"
CODE_BITS = tuple(range(2, 9))
OUTER_BITS = 8            # embeddings and lm_head: 8-bit k-means, dense codes
DEFAULTS = dict(sparsity=0.7, bits=3, fine_tune_steps=300, centroid_steps=100, lr=1e-3, centroid_lr=1e-4,
                gap_bits=4, kmeans_iterations=30)
COLUMNS = ("sparsity", "bits", "stage", "bytes", "ratio", "weights", "loss", "loss_se", "perplexity", "increase",
           "increase_se")


# ---------------------------------------------------------------------------------------------
# Checking what callers pass

def _check_gpt(model) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.model.GPT, got {type(model).__name__}")
    return model


def _check_int(value, name: str, minimum: int = 0, allowed=None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {tuple(allowed)}")
    return int(value)


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_lr(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Exercise 2's formula, and weight sharing


def layer_storage_bytes(n_nonzero: int, n_fillers: int, code_bits: int, gap_bits: int, codebook_entries: int,
                        codebook_value_bytes: int = 2) -> int:
    """Bytes of one matrix in relative-index storage with shared weights: packed codes + packed gaps + codebook.

    Every entry (each nonzero and each filler) has a `code_bits` code and a `gap_bits` gap, each kind packed as
    one bit stream: ceil(n_entries·code_bits / 8) + ceil(n_entries·gap_bits / 8) + codebook_entries·value bytes.
    """
    n_nonzero, n_fillers = _check_int(n_nonzero, "n_nonzero"), _check_int(n_fillers, "n_fillers")
    code_bits = _check_int(code_bits, "code_bits", 1, range(1, 9))
    gap_bits = _check_int(gap_bits, "gap_bits", 1, range(1, 9))
    codebook_entries = _check_int(codebook_entries, "codebook_entries")
    codebook_value_bytes = _check_int(codebook_value_bytes, "codebook_value_bytes", 1)
    n_entries = n_nonzero + n_fillers
    return math.ceil(n_entries * code_bits / 8) + math.ceil(n_entries * gap_bits / 8) + \
        codebook_entries * codebook_value_bytes


def shared_weights(values: Tensor, n_clusters: int, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """k-means in 1-D: (fp16 codebook sorted, (n_clusters,); int64 index of each value's nearest codebook entry).

    The variant of labkit.quantize.kmeans_quantize for the NONZERO weights of a pruned matrix: any number of
    clusters (2**bits − 1 here, code 0 being zero), the same linear initialisation over [min, max] and Lloyd
    iterations; an empty cluster stays put. The final assignment is to the fp16-rounded codebook, so
    codebook[index] is exactly what the file stores.
    """
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point or values.dim() != 1:
        raise TypeError(f"values must be a 1-D float tensor, got "
                        f"{(values.dtype, tuple(values.shape)) if isinstance(values, Tensor) else type(values)}")
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise ValueError("values must be a non-empty tensor of finite numbers")
    n_clusters = _check_int(n_clusters, "n_clusters", 1)
    iterations = _check_int(iterations, "iterations")
    x = values.detach().double()
    centroids = torch.linspace(x.min().item(), x.max().item(), n_clusters, dtype=torch.float64)
    for _ in range(iterations):
        index = _nearest(x, centroids)
        counts = torch.bincount(index, minlength=n_clusters).double()
        sums = torch.zeros_like(centroids).index_add_(0, index, x)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved.sort().values
    codebook = centroids.to(torch.float16).sort().values
    return codebook, _nearest(x, codebook.double())


def _nearest(x: Tensor, sorted_levels: Tensor) -> Tensor:
    """Index (int64) of the nearest of `sorted_levels` for every x (a tie goes to the lower one)."""
    return torch.bucketize(x, (sorted_levels[1:] + sorted_levels[:-1]) / 2)


# ---------------------------------------------------------------------------------------------
# Which tensors are what


def _block_matrices(model: GPT) -> dict[str, nn.Linear]:
    from labkit.prune import prunable_layers
    return prunable_layers(model)


def _outer_matrices(model: GPT) -> list[str]:
    """Names of the 2-D parameters outside the blocks (embeddings, positions, lm_head), as state_dict keys."""
    blocks = {f"{name}.weight" for name in _block_matrices(model)}
    return [name for name, t in model.state_dict().items() if t.dim() == 2 and name not in blocks]


def _vectors(model: GPT) -> list[str]:
    return [name for name, t in model.state_dict().items() if t.dim() != 2]


# ---------------------------------------------------------------------------------------------
# Encoding a weight-shared model: codebooks, codes, gaps (exact), and decoding it back


@dataclass
class EncodedModel:
    """A weight-shared GPT as integer streams: block matrices sparse (gaps + codes), outer matrices dense codes."""

    config: dict
    bits: int
    gap_bits: int
    sparse: dict[str, dict]      # name -> {"shape", "gaps": int64, "codes": int64 (0 = zero/filler), "codebook": fp16}
    dense: dict[str, dict]       # name -> {"shape", "codes": int64, "codebook": fp16}
    floats: dict[str, Tensor]    # name -> fp16


def _fp16_exact(t: Tensor, name: str) -> Tensor:
    half = t.detach().to(torch.float16)
    if not torch.equal(half.float(), t.detach().float()):
        raise ValueError(f"{name} holds values that fp16 does not represent exactly: round it to fp16 first "
                         "(deep_compression does)")
    return half


def encode_model(model: GPT, bits: int | None = None, gap_bits: int = 4) -> EncodedModel:
    """The streams of a weight-shared GPT: per block matrix its distinct nonzero values (the codebook, fp16)
    with a relative index (gap, code) per entry; per outer matrix dense codes into its distinct values.

    A matrix with more than 2**bits − 1 distinct nonzero values (256 for the outer matrices), or values fp16
    cannot hold exactly, is not weight-shared: ValueError. bits=None takes the fewest bits that fit."""
    from labkit.sparse import GAP_BITS

    _check_gpt(model)
    gap_bits = _check_int(gap_bits, "gap_bits", 1, GAP_BITS)
    state = model.state_dict()
    sparse, dense = {}, {}
    blocks = [f"{name}.weight" for name in _block_matrices(model)]
    if bits is None:
        most = max(int(torch.unique(state[n][state[n] != 0]).numel()) for n in blocks)
        bits = max(2, math.ceil(math.log2(most + 1)))
    bits = _check_int(bits, "bits", 2, CODE_BITS)
    for name in blocks:
        w = state[name]
        distinct = torch.unique(w[w != 0])
        if len(distinct) > 2 ** bits - 1:
            raise ValueError(f"{name} has {len(distinct)} distinct nonzero values; {bits}-bit codes hold "
                             f"{2 ** bits - 1} (code 0 is zero): share its weights first")
        codebook = _fp16_exact(distinct, name)
        codes = torch.zeros(w.shape, dtype=torch.long)
        nonzero = w != 0
        codes[nonzero] = torch.searchsorted(codebook.float(), w[nonzero]) + 1
        gaps, entry_codes = _relative_entries(codes, gap_bits)
        sparse[name] = {"shape": list(w.shape), "gaps": gaps, "codes": entry_codes, "codebook": codebook}
    for name in _outer_matrices(model):
        w = state[name]
        distinct = torch.unique(w)
        if len(distinct) > 2 ** OUTER_BITS:
            raise ValueError(f"{name} has {len(distinct)} distinct values; its {OUTER_BITS}-bit codes hold "
                             f"{2 ** OUTER_BITS}: share its weights first")
        codebook = _fp16_exact(distinct, name)
        dense[name] = {"shape": list(w.shape), "codes": torch.searchsorted(codebook.float(), w.reshape(-1)),
                       "codebook": codebook}
    floats = {name: _fp16_exact(state[name], name) for name in _vectors(model)}
    return EncodedModel(model_config_dict(model), bits, gap_bits, sparse, dense, floats)


def _relative_entries(codes: Tensor, gap_bits: int) -> tuple[Tensor, Tensor]:
    """(gaps, codes) of every entry of labkit.sparse.RelativeIndex's stream over the matrix of codes (0 = zero).

    The relative index of the code matrix itself: its values are the codes, its fillers the entries with code 0."""
    from labkit.sparse import RelativeIndex, _unpack_gaps

    index = RelativeIndex.from_dense(codes.float(), gap_bits=gap_bits)   # codes < 256 are exact in float32
    n_entries = len(index.values)
    return _unpack_gaps(index.gaps, gap_bits, n_entries), index.values.long()


def _dense_from_entries(gaps: Tensor, codes: Tensor, codebook: Tensor, shape) -> Tensor:
    """The float32 matrix a relative index of (gap, code) entries describes: codebook[code − 1] at each position."""
    positions = torch.cumsum(gaps + 1, 0) - 1                 # each entry sits gap + 1 after the previous one
    if len(positions) and int(positions[-1]) >= math.prod(shape):
        raise ValueError(f"the gaps reach position {int(positions[-1])} of a {list(shape)} matrix: corrupt data")
    if len(codes) and int(codes.max()) > len(codebook):
        raise ValueError(f"code {int(codes.max())} is beyond the {len(codebook)}-entry codebook: corrupt data")
    values = torch.cat([codebook.new_zeros(1), codebook]).float()[codes]
    w = torch.zeros(math.prod(shape), dtype=torch.float32)
    w[positions] = values
    return w.view(*shape)


def decode_model(encoded: EncodedModel) -> GPT:
    """The GPT an EncodedModel describes (weights exactly the codebooks' values), in eval mode."""
    config = dict(encoded.config)
    model = build_model(config.pop("kind"), **config)
    state = {name: _dense_from_entries(s["gaps"], s["codes"], s["codebook"], s["shape"])
             for name, s in encoded.sparse.items()}
    state.update({name: d["codebook"].float()[d["codes"]].view(*d["shape"]) for name, d in encoded.dense.items()})
    state.update({name: t.float() for name, t in encoded.floats.items()})
    model.load_state_dict(state, strict=True)
    return model.eval()


def _packed(encoded: EncodedModel) -> dict[str, Tensor]:
    """The "relative index" storage: per block matrix packed codes, packed gaps, fp16 codebook; outer matrices'
    uint8 codes + codebook; fp16 gains."""
    from labkit.quantize import pack_codes

    arrays = {}
    for name, s in encoded.sparse.items():
        arrays[f"{name}/codes"] = pack_codes(s["codes"], encoded.bits)
        arrays[f"{name}/gaps"] = pack_codes(s["gaps"], encoded.gap_bits)
        arrays[f"{name}/codebook"] = s["codebook"]
    for name, d in encoded.dense.items():
        arrays[f"{name}/codes"] = d["codes"].to(torch.uint8)
        arrays[f"{name}/codebook"] = d["codebook"]
    arrays.update(encoded.floats)
    return arrays


def _nbytes(arrays: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in arrays.values())


# ---------------------------------------------------------------------------------------------
# The file: Huffman-coded streams + a JSON header, loadable with torch.load(weights_only=True)


def _huffman(symbols: Tensor, alphabet_size: int) -> Tensor:
    from labkit.compress import huffman_encode

    stream = huffman_encode(bytes(symbols.to(torch.uint8).tolist()), alphabet_size=alphabet_size)
    return torch.frombuffer(bytearray(stream), dtype=torch.uint8)


def _unhuffman(stream: Tensor) -> Tensor:
    from labkit.compress import huffman_decode

    symbols = huffman_decode(bytes(stream.tolist()))
    if isinstance(symbols, (bytes, bytearray)):
        return torch.frombuffer(bytearray(symbols), dtype=torch.uint8).long() if symbols else torch.zeros(0, dtype=torch.long)
    return torch.tensor(list(symbols), dtype=torch.long)


def _file_bytes(encoded: EncodedModel, settings: dict | None = None) -> bytes:
    """The compressed file: torch.save of {"header": JSON text, "data": one uint8 tensor}.

    "data" is every section back to back — per block matrix its Huffman-coded codes and gaps and its fp16
    codebook, per outer matrix its Huffman-coded codes and codebook, the fp16 gains — and the header gives each
    section's (offset, length). One tensor instead of ~60: torch.save spends ~300 bytes of zip and pickle on
    each tensor it stores (20 kB, 8% of the zoo model's file, measured)."""
    sections: list[tuple[str, bytes]] = []

    def add(key: str, payload: bytes | Tensor) -> None:
        if isinstance(payload, Tensor):           # fp16 values as their raw little-endian bytes
            payload = payload.contiguous().view(torch.uint8).numpy().tobytes()
        sections.append((key, payload))

    layers = {}
    for name, s in encoded.sparse.items():
        layers[name] = {"kind": "sparse", "shape": s["shape"]}
        add(f"{name}/codes", _huffman(s["codes"], 2 ** encoded.bits))
        add(f"{name}/gaps", _huffman(s["gaps"], 2 ** encoded.gap_bits))
        add(f"{name}/codebook", s["codebook"])
    for name, d in encoded.dense.items():
        layers[name] = {"kind": "dense", "shape": d["shape"]}
        add(f"{name}/codes", _huffman(d["codes"], 2 ** OUTER_BITS))
        add(f"{name}/codebook", d["codebook"])
    for name, t in encoded.floats.items():
        layers[name] = {"kind": "float", "shape": list(t.shape)}
        add(name, t)
    offsets, start = {}, 0
    for key, payload in sections:
        offsets[key] = [start, len(payload)]
        start += len(payload)
    header = {"format": FILE_FORMAT, "model_config": encoded.config, "bits": encoded.bits,
              "gap_bits": encoded.gap_bits, "layers": layers, "sections": offsets, "settings": settings or {}}
    data = torch.frombuffer(bytearray(b"".join(p for _, p in sections)), dtype=torch.uint8)
    buffer = io.BytesIO()
    torch.save({"header": json.dumps(header, separators=(",", ":")), "data": data}, buffer)
    return buffer.getvalue()


def _encoded_from_file(state) -> EncodedModel:
    """Read what torch.load returned for a compressed file back into an EncodedModel (clear errors otherwise)."""
    if not isinstance(state, dict) or not isinstance(state.get("header"), str) or \
            not isinstance(state.get("data"), Tensor) or state["data"].dtype != torch.uint8:
        raise ValueError("not a labkit.deep_compression file: expected a JSON header and a uint8 data tensor")
    header = json.loads(state["header"])
    if header.get("format") != FILE_FORMAT:
        raise ValueError(f"not a labkit.deep_compression file: format {header.get('format')!r}, "
                         f"expected {FILE_FORMAT!r}")
    data = state["data"]

    def section(key: str) -> Tensor:
        start, length = header["sections"][key]
        if start + length > len(data):
            raise ValueError(f"section {key!r} ends at byte {start + length} of a {len(data)}-byte data block: "
                             "the file is corrupt")
        return data[start:start + length]

    def fp16(key: str) -> Tensor:
        return section(key).clone().view(torch.float16)

    sparse, dense, floats = {}, {}, {}
    for name, layer in header["layers"].items():
        if layer["kind"] == "sparse":
            codes, gaps = _unhuffman(section(f"{name}/codes")), _unhuffman(section(f"{name}/gaps"))
            if len(codes) != len(gaps):
                raise ValueError(f"{name}: {len(codes)} codes but {len(gaps)} gaps — the file is corrupt")
            sparse[name] = {"shape": layer["shape"], "gaps": gaps, "codes": codes, "codebook": fp16(f"{name}/codebook")}
        elif layer["kind"] == "dense":
            dense[name] = {"shape": layer["shape"], "codes": _unhuffman(section(f"{name}/codes")),
                           "codebook": fp16(f"{name}/codebook")}
        else:
            floats[name] = fp16(name).view(*layer["shape"])
    return EncodedModel(header["model_config"], header["bits"], header["gap_bits"], sparse, dense, floats)


# ---------------------------------------------------------------------------------------------
# Bytes of the earlier stages, from real arrays


def _fp32_file_bytes(model: GPT) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def _csr_index_arrays(w: Tensor) -> dict[str, Tensor]:
    from labkit.sparse import CSR

    arrays = CSR.from_dense(w.detach(), index_bytes="smallest").arrays()
    return {k: v for k, v in arrays.items() if k != "values"}


def stage_bytes(model: GPT, stage: str, bits: int | None = None, gap_bits: int = 4) -> int:
    """Bytes (exact, from real arrays) of `model` stored as `stage` stores it (see the module docstring).

    "fp32": the fp32 file; "pruned" / "pruned + fine-tuned": CSR (fp32 values, smallest indices) for block
    matrices, fp32 dense elsewhere; "weight sharing (k-means)" / "centroids fine-tuned": CSR indices + packed
    codes + fp16 codebook, outer matrices uint8 codes + codebook, fp16 gains; "relative index": packed codes
    and gaps + codebooks; "Huffman": the compressed file's size."""
    from labkit.quantize import pack_codes
    from labkit.sparse import CSR

    _check_gpt(model)
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}; allowed: {STAGES}")
    if stage == "fp32":
        return _fp32_file_bytes(model)
    if stage in ("pruned", "pruned + fine-tuned"):
        blocks = {f"{name}.weight" for name in _block_matrices(model)}
        total = 0
        for name, t in model.state_dict().items():
            total += CSR.from_dense(t, index_bytes="smallest").nbytes if name in blocks else t.numel() * t.element_size()
        return total
    if stage == "Huffman":
        return len(_file_bytes(encode_model(model, bits, gap_bits)))
    encoded = encode_model(model, bits, gap_bits)
    arrays = _packed(encoded)
    if stage == "relative index":
        return _nbytes(arrays)
    state = model.state_dict()
    for name, s in encoded.sparse.items():   # CSR's indices and the nonzeros' codes instead of gaps and entries
        del arrays[f"{name}/gaps"]
        arrays.update({f"{name}/{k}": v for k, v in _csr_index_arrays(state[name]).items()})
        arrays[f"{name}/codes"] = pack_codes(s["codes"][s["codes"] > 0], encoded.bits)
    return _nbytes(arrays)


# ---------------------------------------------------------------------------------------------
# Trained quantization: the codes stay, the shared values (centroids) are trained


class SharedWeight(nn.Module):
    """A parametrization weight = [0, centroids][index]: autograd sums each centroid's weights' gradients."""

    def __init__(self, centroids: Tensor, index: Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.detach().float().clone())
        self.register_buffer("index", index.long())           # 0 = pruned (exactly zero), k = centroids[k − 1]

    def forward(self, _weight: Tensor) -> Tensor:
        return torch.cat([self.centroids.new_zeros(1), self.centroids])[self.index]


def _share_block_weights(model: GPT, bits: int, iterations: int) -> dict[str, tuple[Tensor, Tensor]]:
    """k-means on each block matrix's nonzeros, in place: {name: (fp16 codebook, index matrix with 0 = zero)}."""
    shared = {}
    with torch.no_grad():
        for name, layer in _block_matrices(model).items():
            w = layer.weight
            nonzero = w != 0
            index = torch.zeros(w.shape, dtype=torch.long)
            if nonzero.any():
                codebook, assign = shared_weights(w[nonzero], 2 ** bits - 1, iterations)
                index[nonzero] = assign + 1
            else:
                codebook = torch.zeros(0, dtype=torch.float16)
            w.copy_(torch.cat([codebook.new_zeros(1), codebook]).float()[index])
            shared[f"{name}.weight"] = (codebook, index)
    return shared


def _share_outer_and_round(model: GPT) -> None:
    """Outer matrices → 8-bit k-means (labkit.quantize.kmeans_quantize, dequantized); vectors → fp16 values."""
    from labkit.quantize import kmeans_quantize

    state = model.state_dict()
    with torch.no_grad():
        for name in _outer_matrices(model):
            state[name].copy_(kmeans_quantize(state[name], bits=OUTER_BITS).dequantize())
        for name in _vectors(model):
            state[name].copy_(state[name].half().float())


def fine_tune_centroids(model: GPT, shared: dict[str, tuple[Tensor, Tensor]], steps: int, lr: float = 3e-4,
                        seed: int = 0, corpus=None, progress: bool = True, log=print, **settings) -> GPT:
    """Train only the shared values of the block matrices for `steps` steps (labkit.prune.fine_tune's loop), in place.

    Each block matrix becomes [0, centroids][index] through torch.nn.utils.parametrize; every other parameter is
    frozen. Afterwards the centroids are rounded to fp16 (their storage) and the weights set from them."""
    from labkit.prune import fine_tune

    layers = _block_matrices(model)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for name, layer in layers.items():
            codebook, index = shared[f"{name}.weight"]
            parametrize.register_parametrization(layer, "weight", SharedWeight(codebook.float(), index), unsafe=True)
        settings.setdefault("eval_iters", 1)
        fine_tune(model, {}, steps, lr=lr, seed=seed, corpus=corpus, progress=progress, log=log,
                  weight_decay=0.0, **settings)
        with torch.no_grad():
            for name, layer in layers.items():
                sw = layer.parametrizations.weight[0]
                codebook = sw.centroids.detach().to(torch.float16)
                shared[f"{name}.weight"] = (codebook, sw.index)
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
                layer.weight.copy_(torch.cat([codebook.new_zeros(1), codebook]).float()[sw.index])
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class CompressionResult:
    """deep_compression's answer: the stage table, the decoded model, the masks, the settings, the file's bytes."""

    stages: list[dict]
    model: GPT = field(repr=False)
    masks: dict[str, Tensor] = field(repr=False)
    settings: dict
    file_bytes: bytes = field(repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    #: the pruned and fine-tuned model (the one-shot pruned copy when fine_tune_steps=0), before weight sharing:
    #: pipeline_sweep(..., fine_tuned=result) starts from it instead of pruning and fine-tuning again
    tuned: GPT | None = field(default=None, repr=False)
    #: the fp32 model's score (with its per-window losses, the paired differences' base), the evaluation set's name
    #: and the fp32 model's sha256: pipeline_sweep(..., fine_tuned=result) reuses the score on the same model and set
    fp32_score: dict | None = field(default=None, repr=False)
    eval_set_name: str | None = None
    model_sha256: str | None = None


def _score(model: GPT, eval_set, base) -> dict:
    from labkit.evaluate import paired_difference
    from labkit.quantize import validation_perplexity

    ppl = validation_perplexity(model, eval_set)
    out = {"loss": ppl["loss"], "loss_se": ppl["loss_se"], "perplexity": ppl["perplexity"],
           "increase": 0.0, "increase_se": 0.0, "result": ppl["result"]}
    if base is not None:
        diff = paired_difference(ppl["result"], base["result"])
        out.update(increase=diff["difference"], increase_se=diff["standard_error"])
    return out


def _stored_weights(model: GPT) -> int:
    """The parameters a stage stores: every one but the zeros of the block matrices (what pruning removed)."""
    blocks = {f"{name}.weight" for name in _block_matrices(model)}
    return sum(int(torch.count_nonzero(p)) if name in blocks else p.numel() for name, p in model.named_parameters())


def _row(stage: str, n_bytes: int, fp32_bytes: int, score: dict, model: GPT) -> dict:
    return {"stage": stage, "bytes": int(n_bytes), "ratio": fp32_bytes / n_bytes, "weights": _stored_weights(model),
            **{k: float(score[k]) for k in ("loss", "loss_se", "perplexity", "increase", "increase_se")}}


def _check_settings(sparsity, bits, fine_tune_steps, centroid_steps, lr, centroid_lr, gap_bits, seed) -> dict:
    from labkit.sparse import GAP_BITS

    return dict(sparsity=_check_fraction(sparsity, "sparsity"), bits=_check_int(bits, "bits", 2, CODE_BITS),
                fine_tune_steps=_check_int(fine_tune_steps, "fine_tune_steps"),
                centroid_steps=_check_int(centroid_steps, "centroid_steps"), lr=_check_lr(lr, "lr"),
                centroid_lr=_check_lr(centroid_lr, "centroid_lr"),
                gap_bits=_check_int(gap_bits, "gap_bits", 1, GAP_BITS), seed=_check_int(seed, "seed"))


def _prune_and_tune(model: GPT, s: dict, corpus, progress: bool, log, timings: dict):
    """(masks, one-shot pruned copy, the pruned copy fine-tuned — or None for 0 steps)."""
    from labkit.prune import fine_tune, layer_masks, pruned_copy

    t0 = time.perf_counter()
    masks = layer_masks(model, s["sparsity"])
    pruned = pruned_copy(model, masks)
    timings["prune_s"] = time.perf_counter() - t0
    tuned = None
    if s["fine_tune_steps"]:
        t0 = time.perf_counter()
        tuned, _ = fine_tune(copy.deepcopy(pruned), masks, s["fine_tune_steps"], lr=s["lr"], seed=s["seed"],
                             corpus=corpus, progress=progress, log=log, eval_iters=1)
        timings["fine_tune_s"] = time.perf_counter() - t0
    return masks, pruned, tuned


def _quantize_stages(tuned: GPT, s: dict, corpus, eval_set, base, fp32_bytes: int, progress: bool, log,
                     timings: dict, verify: bool = True) -> tuple[list[dict], GPT, bytes]:
    """The rows from weight sharing on (k-means, centroids, relative index, Huffman), the final model, the file.

    verify=True decodes the file, checks its weights equal the model's and scores the decoded model for the last
    row; verify=False (the sweep) gives the last row the relative index's score: the same weights, losslessly coded."""
    t0 = time.perf_counter()
    shared_model = copy.deepcopy(tuned)
    shared = _share_block_weights(shared_model, s["bits"], DEFAULTS["kmeans_iterations"])
    _share_outer_and_round(shared_model)
    timings["kmeans_s"] = time.perf_counter() - t0
    rows = [_row("weight sharing (k-means)", stage_bytes(shared_model, "weight sharing (k-means)", s["bits"],
                                                         s["gap_bits"]), fp32_bytes, _score(shared_model, eval_set,
                                                                                            base), shared_model)]
    final = shared_model
    if s["centroid_steps"]:
        t0 = time.perf_counter()
        final = fine_tune_centroids(copy.deepcopy(shared_model), shared, s["centroid_steps"], lr=s["centroid_lr"],
                                    seed=s["seed"], corpus=corpus, progress=progress, log=log)
        timings["centroids_s"] = time.perf_counter() - t0
        rows.append(_row("centroids fine-tuned", stage_bytes(final, "centroids fine-tuned", s["bits"],
                                                              s["gap_bits"]), fp32_bytes,
                         _score(final, eval_set, base), final))
    t0 = time.perf_counter()
    encoded = encode_model(final, s["bits"], s["gap_bits"])
    relative = decode_model(encoded)
    timings["relative_index_s"] = time.perf_counter() - t0
    _check_same_weights(relative, final, "the relative index")
    t0 = time.perf_counter()
    blob = _file_bytes(encoded, s)
    timings["huffman_encode_s"] = time.perf_counter() - t0
    loaded = relative
    if verify:
        t0 = time.perf_counter()
        loaded = decode_model(_encoded_from_file(torch.load(io.BytesIO(blob), weights_only=True)))
        timings["huffman_decode_s"] = time.perf_counter() - t0
        _check_same_weights(loaded, final, "the Huffman-coded file")
    # the relative index holds the same weights (checked above), so it scores what the row above measured; the
    # file's row is measured again on the model decoded from the file
    relative_score = {k: rows[-1][k] for k in ("loss", "loss_se", "perplexity", "increase", "increase_se")}
    rows.append(_row("relative index", _nbytes(_packed(encoded)), fp32_bytes, relative_score, relative))
    rows.append(_row("Huffman", len(blob), fp32_bytes, _score(loaded, eval_set, base) if verify else relative_score,
                     loaded))
    return rows, loaded, blob


def _check_same_weights(a: GPT, b: GPT, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name, t in sb.items():
        if not torch.equal(sa[name], t):
            raise RuntimeError(f"{what} does not reproduce {name} exactly (a bug in labkit.deep_compression)")


def deep_compression(model: GPT, sparsity: float = DEFAULTS["sparsity"], bits: int = DEFAULTS["bits"],
                     fine_tune_steps: int = DEFAULTS["fine_tune_steps"],
                     centroid_steps: int = DEFAULTS["centroid_steps"], seed: int = 0, corpus=None, eval_set=None,
                     progress: bool = True, log=print, lr: float = DEFAULTS["lr"],
                     centroid_lr: float = DEFAULTS["centroid_lr"], gap_bits: int = DEFAULTS["gap_bits"]
                     ) -> CompressionResult:
    """Prune → fine-tune → share weights (k-means) → train the shared values → relative index → Huffman.

    `model` is left unchanged. Returns a CompressionResult whose `.stages` rows give each stage's bytes (exact,
    see the module docstring), ratio to the fp32 file, loss (nats/char) ± SE, perplexity and the paired loss
    increase over fp32 ± SE on `eval_set` (default labkit.quantize.default_eval_set(corpus)). The last row's
    bytes are the file save_compressed writes; `.model` is the model that file decodes to."""
    from labkit.quantize import default_eval_set

    _check_gpt(model)
    s = _check_settings(sparsity, bits, fine_tune_steps, centroid_steps, lr, centroid_lr, gap_bits, seed)
    if eval_set is None:
        eval_set = default_eval_set(corpus)
    timings: dict[str, float] = {}
    log(f"seed {s['seed']}")
    base = _score(model, eval_set, None)
    fp32_bytes = _fp32_file_bytes(model)
    rows = [_row("fp32", fp32_bytes, fp32_bytes, base, model)]
    masks, pruned, tuned = _prune_and_tune(model, s, corpus, progress, log, timings)
    rows.append(_row("pruned", stage_bytes(pruned, "pruned"), fp32_bytes, _score(pruned, eval_set, base), pruned))
    if tuned is not None:
        rows.append(_row("pruned + fine-tuned", stage_bytes(tuned, "pruned + fine-tuned"), fp32_bytes,
                         _score(tuned, eval_set, base), tuned))
    more, final, blob = _quantize_stages(tuned if tuned is not None else pruned, s, corpus, eval_set, base,
                                         fp32_bytes, progress, log, timings)
    rows.extend(more)
    return CompressionResult(rows, final, masks, s, blob, timings, tuned if tuned is not None else pruned, base,
                             getattr(eval_set, "name", None), _weights_sha256(model))


# ---------------------------------------------------------------------------------------------
# Saving and loading


def save_compressed(result_or_model: CompressionResult | GPT, path: Path | str, bits: int | None = None,
                    gap_bits: int = 4) -> int:
    """Write the compressed file atomically (temp name + rename); returns its size in bytes.

    A CompressionResult writes exactly the bytes its last row counts; a weight-shared GPT (e.g. result.model)
    is encoded first (bits=None: the fewest code bits that hold its block matrices' distinct values)."""
    from labkit.data import atomic_write_bytes

    if isinstance(result_or_model, CompressionResult):
        blob = result_or_model.file_bytes
    elif isinstance(result_or_model, GPT):
        blob = _file_bytes(encode_model(result_or_model, bits, gap_bits))
    else:
        raise TypeError(f"result_or_model must be a CompressionResult or a weight-shared GPT, got "
                        f"{type(result_or_model).__name__}")
    path = Path(path)
    atomic_write_bytes(path, blob)
    return path.stat().st_size


def load_compressed(path: Path | str) -> GPT:
    """The GPT a save_compressed file holds: Huffman streams → gaps and codes → codebooks → dense fp32 weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:   # not a zip, cut short, refused objects
        raise ValueError(f"path={str(path)!r} is not a labkit.deep_compression file: {e}") from None
    return decode_model(_encoded_from_file(state))


# ---------------------------------------------------------------------------------------------
# The sweep for the lab's panel


def _weights_sha256(model: GPT) -> str:
    """sha256 of the model's config and weights."""
    import hashlib

    weights = hashlib.sha256(json.dumps(model_config_dict(model), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        weights.update(name.encode())
        weights.update(t.detach().contiguous().numpy().tobytes())
    return weights.hexdigest()


def _fingerprint(model: GPT, corpus) -> dict:
    """sha256 of the model's config and weights and of the corpus's training tokens (the cache's key)."""
    import hashlib

    import numpy as np

    tokens = hashlib.sha256(np.ascontiguousarray(corpus.train).tobytes())
    return {"model_sha256": _weights_sha256(model), "corpus_train_sha256": tokens.hexdigest()}


def pipeline_sweep(model: GPT, sparsities=(0.5, 0.7, 0.8), bits=(2, 3, 4), fine_tune_steps: int = 150,
                   centroid_steps: int = 0, seed: int = 0, corpus=None, eval_set=None, progress: bool = True,
                   log=print, cache: bool = True, fine_tuned: CompressionResult | None = None):
    """A pandas DataFrame, one row per (sparsity, bits, stage), columns COLUMNS: the lab panel's data.

    Pruning is iterative, as in the paper: the sparsities in increasing order, each one pruned from the previous
    one's fine-tuned model and fine-tuned `fine_tune_steps` more steps (so 0.7 after 0.5 has had 2 × steps in
    all; its "pruned" row is the loss right after that further pruning). Each fine-tuned model is reused for
    every bits. The "Huffman" row carries the relative index's score (the same weights, losslessly coded; the
    main run, deep_compression, decodes its file and scores it).

    fine_tuned: a deep_compression result on this model and `eval_set`. Its pruned and fine-tuned model
    (`.tuned`) stands for its sparsity, which must be one of `sparsities`: that sparsity's fp32, pruned and
    pruned + fine-tuned rows are its rows, no fine-tuning is repeated, the sparsities above it are pruned from
    it, and the rows at its sparsity and bits match its table up to weight sharing (no centroid training here).
    The sparsities below it start from `model`. This is how the lab keeps its cold run short: one fine-tuning
    per extra sparsity instead of one per sparsity.

    Cached with labkit.data.cached_results, keyed by every setting and the model's, the corpus's and (if given)
    the fine-tuned model's sha256, so a second run reads a file."""
    import pandas as pd

    from labkit import data as data_mod
    from labkit.data import cached_results
    from labkit.prune import fine_tune, layer_masks, pruned_copy
    from labkit.quantize import default_eval_set

    _check_gpt(model)
    if isinstance(sparsities, (str, bytes)) or isinstance(bits, (str, bytes)):
        raise TypeError("sparsities and bits must be sequences of numbers")
    sparsities = sorted({_check_fraction(x, "sparsities[...]") for x in sparsities})
    bits = sorted({_check_int(b, "bits[...]", 2, CODE_BITS) for b in bits})
    if not sparsities or not bits:
        raise ValueError(f"sparsities and bits must each hold at least one value, got {sparsities} and {bits}")
    s0 = _check_settings(sparsities[0], bits[0], fine_tune_steps, centroid_steps, DEFAULTS["lr"],
                         DEFAULTS["centroid_lr"], DEFAULTS["gap_bits"], seed)
    reused = None
    if fine_tuned is not None:
        if not isinstance(fine_tuned, CompressionResult) or fine_tuned.tuned is None:
            raise TypeError(f"fine_tuned must be a CompressionResult of deep_compression, got "
                            f"{type(fine_tuned).__name__}")
        reused = fine_tuned.settings["sparsity"]
        if not any(math.isclose(reused, x) for x in sparsities):
            raise ValueError(f"fine_tuned was pruned to sparsity {reused!r}, which is not in sparsities "
                             f"{sparsities}; add it")
        reused = min(sparsities, key=lambda x: abs(x - reused))
    corpus = corpus if corpus is not None else data_mod.load_corpus()
    if eval_set is None:
        eval_set = default_eval_set(corpus)
    settings = {"sparsities": sparsities, "bits": bits, **{k: v for k, v in s0.items() if k not in ("sparsity",
                                                                                                    "bits")},
                "pruning": "iterative, magnitude per matrix", "eval_set": eval_set.name, "columns": list(COLUMNS),
                **_fingerprint(model, corpus)}
    if fine_tuned is not None:
        if fine_tuned.model_sha256 != settings["model_sha256"] or fine_tuned.eval_set_name != eval_set.name:
            raise ValueError("fine_tuned was made from another model or scored on another evaluation set: "
                             f"{fine_tuned.eval_set_name!r} vs eval_set {eval_set.name!r}"
                             + ("" if fine_tuned.model_sha256 == settings["model_sha256"] else
                                ", and its fp32 model's weights are not `model`'s"))
        settings["fine_tuned"] = {**fine_tuned.settings, "tuned_sha256": _weights_sha256(fine_tuned.tuned)}

    def compute() -> list[dict]:
        from tqdm.auto import tqdm

        def quiet(*_args) -> None:
            pass

        # the same model on the same windows (checked above): deep_compression's fp32 score is this one
        base = fine_tuned.fp32_score if fine_tuned is not None else _score(model, eval_set, None)
        fp32_bytes = _fp32_file_bytes(model)
        out = []
        bar = tqdm(total=len(sparsities) * len(bits), desc="pipeline sweep", disable=not progress, mininterval=1.0)
        start = model
        for sparsity in sparsities:
            s = {**s0, "sparsity": sparsity}
            if sparsity == reused:
                tuned = fine_tuned.tuned
                first = [r for r in fine_tuned.stages if r["stage"] in ("fp32", "pruned", "pruned + fine-tuned")]
            else:
                masks = layer_masks(start, sparsity)          # the previous zeros are the smallest |w|: nested masks
                pruned = pruned_copy(start, masks)
                first = [_row("fp32", fp32_bytes, fp32_bytes, base, model),
                         _row("pruned", stage_bytes(pruned, "pruned"), fp32_bytes, _score(pruned, eval_set, base),
                              pruned)]
                tuned = pruned
                if s["fine_tune_steps"]:
                    tuned, _ = fine_tune(copy.deepcopy(pruned), masks, s["fine_tune_steps"], lr=s["lr"],
                                         seed=s["seed"], corpus=corpus, progress=False, log=quiet, eval_iters=1)
                    first.append(_row("pruned + fine-tuned", stage_bytes(tuned, "pruned + fine-tuned"), fp32_bytes,
                                      _score(tuned, eval_set, base), tuned))
            for b in bits:
                rows, _, _ = _quantize_stages(tuned, {**s, "bits": b}, corpus, eval_set, base, fp32_bytes, False,
                                              quiet, {}, verify=False)
                out.extend({"sparsity": sparsity, "bits": b, **row} for row in first + rows)
                bar.update(1)
            start = tuned
        bar.close()
        return out

    rows = cached_results("deep-compression-sweep", settings, compute) if cache else compute()
    log(f"pipeline sweep: seed {s0['seed']}, sparsities {sparsities}, bits {bits}, {s0['fine_tune_steps']} "
        f"fine-tuning steps per sparsity" + (f" (at {reused:g}: deep_compression's model, "
                                              f"{fine_tuned.settings['fine_tune_steps']} steps)" if reused is not None else ""))
    return pd.DataFrame(rows, columns=list(COLUMNS))
