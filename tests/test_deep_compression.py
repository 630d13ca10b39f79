"""labkit.deep_compression: every stage's bytes from real arrays, the file's roundtrip, trained centroids, bad input."""
from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import torch

from labkit import deep_compression as dc
from labkit import prune, sparse
from labkit.compress import CorruptStream
from labkit.evaluate import evaluation_set
from labkit.model import GPT, GPTConfig
from labkit.quantize import pack_codes

QUIET = dict(progress=False, log=lambda *a: None)


def tiny_gpt_for(corpus, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32,
                         activation="relu2", tie_weights=False)).eval()


@pytest.fixture(scope="module")
def eval_set(corpus):
    return evaluation_set(corpus.val, window=16, every=4)


@pytest.fixture(scope="module")
def result(corpus, eval_set):
    model = tiny_gpt_for(corpus)
    return dc.deep_compression(model, sparsity=0.6, bits=3, fine_tune_steps=3, centroid_steps=2, corpus=corpus,
                               eval_set=eval_set, lr=1e-3, **QUIET)


def logits(model: GPT, corpus) -> torch.Tensor:
    x = torch.from_numpy(corpus.val[:64].astype("int64")).view(4, 16)
    with torch.no_grad():
        return model(x)[0]


# ----------------------------------------------------------------------------- the stage table

def test_the_table_has_every_stage_in_order_with_ratios_of_the_fp32_file(result):
    assert [r["stage"] for r in result.stages] == list(dc.STAGES)
    fp32 = result.stages[0]["bytes"]
    for row in result.stages:
        assert row["ratio"] == pytest.approx(fp32 / row["bytes"])
        assert set(row) == {"stage", "bytes", "ratio", "weights", "loss", "loss_se", "perplexity", "increase",
                            "increase_se"}
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
    assert result.stages[0]["increase"] == 0.0
    # weights: every parameter in fp32; from pruning on, all but the block matrices' zeros (the same in every row)
    n_params = sum(p.numel() for p in result.model.parameters())
    zeros = sum(int((result.model.get_submodule(n).weight == 0).sum()) for n in dc._block_matrices(result.model))
    assert result.stages[0]["weights"] == n_params
    assert {r["weights"] for r in result.stages[1:]} == {n_params - zeros}
    # storage shrinks stage after stage where the format changes (Huffman's tables and the file's header cost
    # more than they save on a model this tiny: 12k block weights; the zoo model is the notebook's)
    by_stage = {r["stage"]: r["bytes"] for r in result.stages}
    assert by_stage["fp32"] > by_stage["pruned"] > by_stage["weight sharing (k-means)"] > by_stage["relative index"]


def test_zero_steps_leave_out_the_fine_tuning_rows(corpus, eval_set):
    r = dc.deep_compression(tiny_gpt_for(corpus), sparsity=0.5, bits=2, fine_tune_steps=0, centroid_steps=0,
                            corpus=corpus, eval_set=eval_set, **QUIET)
    assert [row["stage"] for row in r.stages] == ["fp32", "pruned", "weight sharing (k-means)", "relative index",
                                                  "Huffman"]


def test_the_fp32_row_is_the_size_of_the_fp32_file(corpus, result, tmp_path):
    model = tiny_gpt_for(corpus)
    # torch.save names the zip's top folder after the file ("archive" for a buffer), so the size depends on the
    # name's length by a few bytes: a file named archive.pt is byte for byte what the row counts
    torch.save(model.state_dict(), tmp_path / "archive.pt")
    assert result.stages[0]["bytes"] == os.path.getsize(tmp_path / "archive.pt")


def test_the_pruned_rows_count_csr_with_fp32_values_and_the_smallest_indices(corpus, result):
    model = tiny_gpt_for(corpus)
    masks = prune.layer_masks(model, 0.6)
    pruned = prune.pruned_copy(model, masks)
    expected = 0
    for name, t in pruned.state_dict().items():
        layer = name.removesuffix(".weight")
        if layer in masks:
            nnz = int(masks[layer].sum())
            index = sparse.smallest_index_bytes(max(t.size(1) - 1, nnz))
            expected += sparse.csr_bytes(t.size(0), nnz, value_bytes=4, index_bytes=index)
        else:
            expected += 4 * t.numel()
    assert result.stages[1]["bytes"] == expected
    assert expected < 4 * sum(t.numel() for t in pruned.state_dict().values())   # smaller than dense fp32


def relative_index_formula(model: GPT, gap_bits: int = 4, code_bits: int = 3) -> int:
    """The relative index row from formulas: layer_storage_bytes per block matrix + 8-bit outer codes + fp16."""
    blocks = {f"{name}.weight" for name in prune.prunable_layers(model)}
    total = 0
    for name, w in model.state_dict().items():
        if name in blocks:
            nnz = int((w != 0).sum())
            total += dc.layer_storage_bytes(nnz, sparse.relative_fillers(w, gap_bits), code_bits, gap_bits,
                                            codebook_entries=len(torch.unique(w[w != 0])))
        elif w.dim() == 2:
            total += w.numel() + 2 * len(torch.unique(w))       # uint8 codes + fp16 codebook
        else:
            total += 2 * w.numel()                               # fp16 gains
    return total


def test_the_relative_index_row_is_layer_storage_bytes_of_every_matrix(result):
    assert result.stages[-2]["stage"] == "relative index"
    assert result.stages[-2]["bytes"] == relative_index_formula(result.model)


def test_the_shared_weights_rows_count_csr_indices_packed_codes_and_codebooks(result):
    model = result.model
    blocks = {f"{name}.weight" for name in prune.prunable_layers(model)}
    total = 0
    for name, w in model.state_dict().items():
        if name in blocks:
            nnz = int((w != 0).sum())
            index = sparse.smallest_index_bytes(max(w.size(1) - 1, nnz))
            total += (w.size(0) + 1 + nnz) * index + math.ceil(nnz * 3 / 8) + 2 * len(torch.unique(w[w != 0]))
        elif w.dim() == 2:
            total += w.numel() + 2 * len(torch.unique(w))
        else:
            total += 2 * w.numel()
    assert result.stages[4]["stage"] == "centroids fine-tuned" and result.stages[4]["bytes"] == total


def test_stage_bytes_refuses_an_unknown_stage(result):
    with pytest.raises(ValueError, match="stage='zipped'; allowed"):
        dc.stage_bytes(result.model, "zipped")


# ----------------------------------------------------------------------------- the file

def test_the_file_is_the_last_row_and_loads_to_equal_logits(corpus, result, tmp_path):
    path = tmp_path / "model.dc"
    n = dc.save_compressed(result, path)
    assert n == os.path.getsize(path) == result.stages[-1]["bytes"]
    loaded = dc.load_compressed(path)
    assert torch.equal(logits(loaded, corpus), logits(result.model, corpus))
    for name, t in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())    # the temp file was renamed away


def test_a_weight_shared_model_saves_by_itself_to_the_same_weights(corpus, result, tmp_path):
    n = dc.save_compressed(result.model, tmp_path / "m.dc")
    assert n == os.path.getsize(tmp_path / "m.dc")
    loaded = dc.load_compressed(tmp_path / "m.dc")
    assert torch.equal(logits(loaded, corpus), logits(result.model, corpus))


def test_the_huffman_row_scores_the_model_decoded_from_the_file_the_same_as_the_relative_index(result):
    *_, packed, coded = result.stages
    assert coded["loss"] == packed["loss"] and coded["increase"] == packed["increase"]


def test_a_model_that_is_not_weight_shared_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="distinct nonzero values"):
        dc.save_compressed(tiny_gpt_for(corpus), tmp_path / "x.dc", bits=4)
    with pytest.raises(TypeError, match="CompressionResult or a weight-shared GPT"):
        dc.save_compressed({"a": 1}, tmp_path / "x.dc")


def test_damaged_files_give_clear_errors(result, tmp_path):
    path = tmp_path / "model.dc"
    dc.save_compressed(result, path)
    blob = path.read_bytes()
    (tmp_path / "cut.dc").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a labkit.deep_compression file"):
        dc.load_compressed(tmp_path / "cut.dc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dc.load_compressed(tmp_path / "missing.dc")
    # a Huffman stream with one payload bit flipped: the stream's checksum catches it
    state = torch.load(path, weights_only=True)
    header = json.loads(state["header"])
    start, length = header["sections"]["blocks.0.mlp.fc.weight/codes"]
    state["data"][start + length - 1] ^= 1
    torch.save(state, tmp_path / "flipped.dc")
    with pytest.raises(CorruptStream):
        dc.load_compressed(tmp_path / "flipped.dc")
    state = torch.load(path, weights_only=True)
    state["header"] = state["header"].replace("labkit.deep_compression/1", "something/9")
    torch.save(state, tmp_path / "other.dc")
    with pytest.raises(ValueError, match="format 'something/9'"):
        dc.load_compressed(tmp_path / "other.dc")
    state = torch.load(path, weights_only=True)
    state["data"] = state["data"][:100]
    torch.save(state, tmp_path / "short.dc")
    with pytest.raises(ValueError, match="the file is corrupt"):
        dc.load_compressed(tmp_path / "short.dc")


def test_the_file_is_one_data_tensor_and_a_json_header_whose_sections_tile_it(result, tmp_path):
    dc.save_compressed(result, tmp_path / "m.dc")
    state = torch.load(tmp_path / "m.dc", weights_only=True)
    assert set(state) == {"header", "data"} and state["data"].dtype == torch.uint8
    spans = sorted(json.loads(state["header"])["sections"].values())
    assert spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    assert spans[-1][0] + spans[-1][1] == len(state["data"])


# ----------------------------------------------------------------------------- the weights of each stage

def test_pruned_weights_stay_zero_and_each_matrix_has_at_most_2_to_the_bits_minus_1_values(result):
    state = result.model.state_dict()
    for name, mask in result.masks.items():
        w = state[f"{name}.weight"]
        assert (w[~mask] == 0).all(), name
        assert len(torch.unique(w[w != 0])) <= 2 ** 3 - 1, name
    for name in ("wte.weight", "wpe.weight", "lm_head.weight"):
        assert len(torch.unique(state[name])) <= 256
        assert torch.equal(state[name].half().float(), state[name])


def test_the_model_argument_is_left_unchanged(corpus, eval_set):
    model = tiny_gpt_for(corpus)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dc.deep_compression(model, sparsity=0.5, bits=2, fine_tune_steps=1, centroid_steps=1, corpus=corpus,
                        eval_set=eval_set, **QUIET)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_shared_weights_is_k_means_each_value_at_its_nearest_centroid_each_centroid_the_mean():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(500, generator=g) * 0.1 - 0.3, torch.randn(500, generator=g) * 0.1 + 0.3])
    codebook, index = dc.shared_weights(values, 7, iterations=100)
    assert codebook.dtype == torch.float16 and len(codebook) == 7 and torch.equal(codebook, codebook.sort().values)
    distance = (values[:, None] - codebook.float()[None, :]).abs()
    assert torch.equal(distance.gather(1, index[:, None]).squeeze(1), distance.min(dim=1).values)
    for k in range(7):
        members = values[index == k]
        if len(members):
            assert codebook[k].item() == pytest.approx(members.mean().item(), abs=2e-3)
    assert torch.equal(dc.shared_weights(values, 7, iterations=100)[1], index)       # deterministic


def test_the_relative_entries_roundtrip_and_match_labkit_sparse_with_fillers():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(1, 8, (12, 40), generator=g) * (torch.rand(12, 40, generator=g) < 0.08)
    codes[3:6] = 0                                   # a run of 120 zeros: fillers at 4-bit gaps
    codebook = torch.linspace(-1, 1, 7).half()
    gaps, entry_codes = dc._relative_entries(codes, 4)
    assert len(entry_codes) - int((codes != 0).sum()) == sparse.relative_fillers(codes.float(), 4) > 0
    assert int(gaps.max()) <= 15
    w = dc._dense_from_entries(gaps, entry_codes, codebook, codes.shape)
    assert torch.equal(w, torch.cat([torch.zeros(1), codebook.float()])[codes])
    rows, cols, _ = sparse.RelativeIndex.from_dense(w, gap_bits=4).coordinates()
    assert torch.equal(torch.stack([rows, cols]), (w != 0).nonzero().T)


def test_layer_storage_bytes_is_the_real_count_of_a_real_matrix(baby):
    """Exercise 2's reference against the packed arrays of the zoo model's first attention matrix."""
    w = prune.prunable_layers(baby)["blocks.0.attn.qkv"].weight.detach()
    w = w * prune.magnitude_mask(w, 0.7)
    codebook, index = dc.shared_weights(w[w != 0], 2 ** 4 - 1)
    codes = torch.zeros(w.shape, dtype=torch.long)
    codes[w != 0] = index + 1
    gaps, entry_codes = dc._relative_entries(codes, 4)
    real = pack_codes(entry_codes, 4).numel() + pack_codes(gaps, 4).numel() + codebook.numel() * 2
    n_fillers = sparse.relative_fillers(w, 4)
    assert dc.layer_storage_bytes(int((w != 0).sum()), n_fillers, 4, 4, len(codebook)) == real
    # and the mistakes the exercise's hints name give other numbers
    assert dc.layer_storage_bytes(int((w != 0).sum()), 0, 4, 4, len(codebook)) != real or n_fillers == 0
    assert dc.layer_storage_bytes(int((w != 0).sum()), n_fillers, 4, 4, 0) != real


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_nonzero=-1, n_fillers=0, code_bits=4, gap_bits=4, codebook_entries=16), "n_nonzero"),
    (dict(n_nonzero=5, n_fillers=0, code_bits=9, gap_bits=4, codebook_entries=16), "code_bits"),
    (dict(n_nonzero=5, n_fillers=0.5, code_bits=4, gap_bits=4, codebook_entries=16), "n_fillers"),
])
def test_layer_storage_bytes_refuses_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dc.layer_storage_bytes(**kwargs)


# ----------------------------------------------------------------------------- trained quantization

def test_a_centroids_gradient_is_the_sum_of_its_weights_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5, bias=False)
    index = torch.randint(0, 4, (5, 6))                        # 0 = pruned, 1..3 = shared values
    shared = dc.SharedWeight(torch.tensor([-0.5, 0.1, 0.7]), index)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", shared, unsafe=True)
    x = torch.randn(8, 6)
    layer(x).pow(2).sum().backward()
    # the same loss through an ordinary dense weight holding the same values
    dense = torch.cat([torch.zeros(1), shared.centroids.detach()])[index].requires_grad_(True)
    (x @ dense.T).pow(2).sum().backward()
    expected = torch.stack([dense.grad[index == k + 1].sum() for k in range(3)])
    assert torch.allclose(shared.centroids.grad, expected, atol=1e-5)
    assert dense.grad[index == 0].abs().sum() > 0                # pruned weights have gradients; nothing takes them


def test_fine_tuning_centroids_keeps_the_codes_and_zeros_and_moves_the_values(corpus):
    model = tiny_gpt_for(corpus)
    masks = prune.layer_masks(model, 0.5)
    prune.apply_masks(model, masks)
    shared = dc._share_block_weights(model, 3, 30)
    before = {name: codebook.clone() for name, (codebook, _) in shared.items()}
    outer = model.wte.weight.detach().clone()
    dc.fine_tune_centroids(model, shared, steps=3, lr=1e-2, corpus=corpus, batch_size=4, **QUIET)
    state = model.state_dict()
    moved = 0
    for name, (codebook, index) in shared.items():
        assert codebook.dtype == torch.float16
        assert torch.equal(state[name], torch.cat([torch.zeros(1), codebook.float()])[index])
        assert (state[name][~masks[name.removesuffix(".weight")]] == 0).all()
        moved += int(not torch.equal(codebook, before[name]))
    assert moved == len(shared)
    assert torch.equal(model.wte.weight, outer)                # everything else frozen
    assert all(p.requires_grad for p in model.parameters())    # and unfrozen afterwards
    assert not any(hasattr(layer, "parametrizations") for layer in prune.prunable_layers(model).values())


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sparsity=1.0), ValueError, "sparsity must be a number in"),
    (dict(sparsity="half"), ValueError, "sparsity"),
    (dict(bits=1), ValueError, "bits must be an integer >= 2"),
    (dict(bits=9), ValueError, r"bits=9; allowed"),
    (dict(gap_bits=5), ValueError, r"gap_bits=5; allowed: \(4, 8\)"),
    (dict(fine_tune_steps=-1), ValueError, "fine_tune_steps"),
    (dict(centroid_steps=2.5), ValueError, "centroid_steps"),
    (dict(lr=0.0), ValueError, "lr must be a positive number"),
])
def test_bad_settings_are_refused_before_any_work(corpus, kwargs, error, match):
    with pytest.raises(error, match=match):
        dc.deep_compression(tiny_gpt_for(corpus), **{**dict(corpus=corpus), **kwargs}, **QUIET)


def test_a_model_that_is_not_a_gpt_is_refused():
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT"):
        dc.deep_compression(torch.nn.Linear(2, 2), **QUIET)
    with pytest.raises(TypeError, match="values must be a 1-D float tensor"):
        dc.shared_weights(torch.ones(2, 2), 3)


# ----------------------------------------------------------------------------- the panel's sweep

def test_pipeline_sweep_has_the_contracts_columns_prunes_iteratively_and_is_cached(corpus, eval_set, data_dir,
                                                                                    monkeypatch):
    model = tiny_gpt_for(corpus)
    calls = []
    original = prune.fine_tune

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prune, "fine_tune", counting)
    sweep = dc.pipeline_sweep(model, sparsities=(0.7, 0.5), bits=(3, 2), fine_tune_steps=1, corpus=corpus,
                              eval_set=eval_set, **QUIET)
    assert len(calls) == 2                                       # one fine-tune per sparsity, shared across bits
    again = dc.pipeline_sweep(model, sparsities=(0.5, 0.7), bits=(2, 3), fine_tune_steps=1, corpus=corpus,
                              eval_set=eval_set, **QUIET)
    assert len(calls) == 2                                       # read from the cache
    assert list(sweep.columns) == list(dc.COLUMNS)
    assert sweep.equals(again)
    assert list(sweep.drop_duplicates(["sparsity", "bits"])[["sparsity", "bits"]].itertuples(index=False)) == \
        [(0.5, 2), (0.5, 3), (0.7, 2), (0.7, 3)]                 # sorted
    for _, rows in sweep.groupby(["sparsity", "bits"]):
        assert list(rows["stage"]) == ["fp32", "pruned", "pruned + fine-tuned", "weight sharing (k-means)",
                                       "relative index", "Huffman"]
        assert (rows["ratio"] == rows["bytes"].iloc[0] / rows["bytes"]).all()
    # fewer bits, fewer bytes in the relative index; higher sparsity, fewer bytes
    ri = sweep[sweep.stage == "relative index"].set_index(["sparsity", "bits"])["bytes"]
    assert ri[(0.5, 2)] < ri[(0.5, 3)] and ri[(0.7, 2)] < ri[(0.5, 2)]
    with pytest.raises(ValueError, match="sparsities"):
        dc.pipeline_sweep(model, sparsities=(), corpus=corpus, eval_set=eval_set, **QUIET)
    with pytest.raises(ValueError, match="bits"):
        dc.pipeline_sweep(model, sparsities=(0.5,), bits=(1,), corpus=corpus, eval_set=eval_set, **QUIET)


def test_pipeline_sweep_reuses_deep_compressions_fine_tuned_model_for_its_sparsity(corpus, eval_set, result,
                                                                                   monkeypatch):
    model = tiny_gpt_for(corpus)                   # the model `result` compressed
    calls = []
    original = prune.fine_tune

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(prune, "fine_tune", counting)
    scored = []
    score = dc._score
    monkeypatch.setattr(dc, "_score", lambda m, *a: scored.append(1) or score(m, *a))
    sweep = dc.pipeline_sweep(model, sparsities=(0.6, 0.8), bits=(3, 2), fine_tune_steps=1, corpus=corpus,
                              eval_set=eval_set, cache=False, fine_tuned=result, **QUIET)
    assert len(calls) == 1                                       # only 0.8 is fine-tuned; 0.6 is result's model
    assert len(scored) == 2 + 4           # 0.8 pruned and fine-tuned, 4 weight-sharing rows; the fp32 score reused
    at = sweep[(sweep.sparsity == 0.6) & (sweep.bits == 3)].set_index("stage")
    for row in result.stages[:3]:                                # fp32, pruned, pruned + fine-tuned: its own rows
        assert at.loc[row["stage"], "bytes"] == row["bytes"] and at.loc[row["stage"], "loss"] == row["loss"]
    ours = {r["stage"]: r for r in result.stages}                # and the k-means row is the one it measured
    assert at.loc["weight sharing (k-means)", "bytes"] == ours["weight sharing (k-means)"]["bytes"]
    assert at.loc["weight sharing (k-means)", "loss"] == pytest.approx(ours["weight sharing (k-means)"]["loss"])
    # 0.8 is pruned from result's fine-tuned model (iterative): its zeros include all of 0.6's
    n_params = sum(p.numel() for p in model.parameters())
    weights = sweep.drop_duplicates(["sparsity", "stage"]).set_index(["sparsity", "stage"])["weights"]
    assert weights[(0.6, "fp32")] == n_params
    assert weights[(0.8, "pruned")] < weights[(0.6, "pruned + fine-tuned")] < n_params
    assert weights[(0.6, "pruned + fine-tuned")] == dc._stored_weights(result.tuned)
    with pytest.raises(ValueError, match="sparsity 0.6, which is not in sparsities"):
        dc.pipeline_sweep(model, sparsities=(0.5,), bits=(3,), corpus=corpus, eval_set=eval_set, cache=False,
                          fine_tuned=result, **QUIET)
    with pytest.raises(ValueError, match="another model or scored on another evaluation set"):
        dc.pipeline_sweep(tiny_gpt_for(corpus, seed=1), sparsities=(0.6,), bits=(3,), corpus=corpus,
                          eval_set=eval_set, cache=False, fine_tuned=result, **QUIET)
    with pytest.raises(ValueError, match="another evaluation set"):
        dc.pipeline_sweep(model, sparsities=(0.6,), bits=(3,), corpus=corpus, cache=False,
                          eval_set=evaluation_set(corpus.val, window=16, every=8), fine_tuned=result, **QUIET)
    with pytest.raises(TypeError, match="CompressionResult"):
        dc.pipeline_sweep(model, sparsities=(0.6,), bits=(3,), corpus=corpus, eval_set=eval_set, cache=False,
                          fine_tuned=model, **QUIET)


def test_the_papers_figures_are_keyed_by_the_stage_they_belong_beside():
    assert set(dc.PAPER_COUNTS) == {k for k, v in dc.PAPER_RATIOS.items() if not isinstance(v, str)}
    assert set(dc.PAPER_COUNTS) <= set(dc.STAGES)
    # 9× fewer connections is a weight count; 27× (quantized, with the relative index) and 35× are bytes
    assert dc.PAPER_RATIOS["pruned"] == 9 and dc.PAPER_COUNTS["pruned"] == "weights"
    assert dc.PAPER_RATIOS["relative index"] == 27 and dc.PAPER_COUNTS["relative index"] == "bytes"
    assert dc.PAPER_RATIOS["Huffman"] == 35 and dc.PAPER_COUNTS["Huffman"] == "bytes"


# ----------------------------------------------------------------------------- the zoo model's bytes

def test_on_the_zoo_model_every_stage_shrinks_the_file_and_the_defaults_reach_12x(baby, shakespeare):
    """Bytes only (no fine-tuning: it moves weights, not the storage's size much); the perplexity half of the lab's
    claim is the notebook's, measured on the full run."""
    small_eval = evaluation_set(shakespeare.val, window=64, every=64)
    r = dc.deep_compression(baby, sparsity=dc.DEFAULTS["sparsity"], bits=dc.DEFAULTS["bits"], fine_tune_steps=0,
                            centroid_steps=0, eval_set=small_eval, corpus=shakespeare, **QUIET)
    sizes = [row["bytes"] for row in r.stages]
    assert [row["stage"] for row in r.stages] == ["fp32", "pruned", "weight sharing (k-means)", "relative index",
                                                  "Huffman"]
    assert all(a > b for a, b in itertools.pairwise(sizes)), sizes
    assert r.stages[-1]["ratio"] >= 12, r.stages
    assert r.stages[-1]["ratio"] == pytest.approx(r.stages[0]["bytes"] / len(r.file_bytes))
