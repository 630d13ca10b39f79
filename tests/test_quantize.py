"""labkit.quantize: affine quantization against torch's fake-quantize and quantized tensors, exact packing and
bytes, codebooks (k-means, NF4 against the QLoRA paper's table, float8 e4m3), whole models saved and loaded."""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import quantize as Q
from labkit.model import GPT, GPTConfig


def weights(rows=16, cols=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)


def torch_fake_quantize(w: torch.Tensor, q: Q.QuantizedTensor) -> torch.Tensor:
    """The same scales and zero points through torch.fake_quantize_per_channel_affine (one channel per group)."""
    rows, cols = q.codes.shape
    groups = w.reshape(-1, q.group_size) if q.granularity != "tensor" else w.reshape(1, -1)
    scale = q.scale.float().reshape(-1)
    if q.symmetric:  # signed codes: zero point 0, range ±(2**(b-1) - 1)
        zero, lo, hi = torch.zeros_like(scale, dtype=torch.int32), -(2 ** (q.bits - 1) - 1), 2 ** (q.bits - 1) - 1
    else:
        zero, lo, hi = q.zero_point.reshape(-1).int(), 0, 2 ** q.bits - 1
    return torch.fake_quantize_per_channel_affine(groups, scale, zero, 0, lo, hi).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# 1. Affine quantization


@pytest.mark.parametrize("bits", Q.BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity,group_size", [("tensor", None), ("channel", None), ("group", 16)])
def test_dequantize_is_torch_fake_quantize_with_the_same_scales(bits, symmetric, granularity, group_size):
    w = weights(seed=bits)
    q = Q.quantize(w, bits, symmetric, granularity, group_size, scale_dtype="fp32")
    assert q.codes.dtype == torch.uint8 and q.codes.shape == w.shape
    assert torch.equal(q.dequantize(), torch_fake_quantize(w, q))
    if granularity == "tensor":
        zero = 0 if symmetric else int(q.zero_point)
        reference = torch.fake_quantize_per_tensor_affine(w, float(q.scale), zero,
                                                          -(2 ** (bits - 1) - 1) if symmetric else 0,
                                                          2 ** (bits - 1) - 1 if symmetric else 2 ** bits - 1)
        assert torch.equal(q.dequantize(), reference)


@pytest.mark.parametrize("symmetric", [True, False])
def test_8_bit_codes_are_torch_quantize_per_channels_integers(symmetric):
    w = weights(32, 48, seed=3)
    q = Q.quantize(w, 8, symmetric, "channel", scale_dtype="fp32")
    zero = torch.zeros(32, dtype=torch.long) if symmetric else q.zero_point.reshape(-1).long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantized tensors; they remain the reference here
        reference = torch.quantize_per_channel(w, q.scale.reshape(-1).double(), zero, 0,
                                               torch.qint8 if symmetric else torch.quint8)
    codes = reference.int_repr().long() + (128 if symmetric else 0)    # our codes are unsigned, offset by 2**(b-1)
    assert torch.equal(q.codes.long(), codes)
    assert torch.equal(q.dequantize(), reference.dequantize())


def test_halves_round_to_even_like_torch():
    # scale 1 exactly (absmax 7 at 4 bits): w / scale lands on halves
    w = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])
    q = Q.quantize(w, 4, symmetric=True, granularity="tensor", scale_dtype="fp32")
    assert float(q.scale) == 1.0
    assert q.dequantize().tolist() == [[7.0, 0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0]]
    assert torch.equal(q.dequantize(), torch.fake_quantize_per_tensor_affine(w, 1.0, 0, -7, 7))
    assert round(2.5) == 2 and torch.round(torch.tensor(2.5)) == 2   # Python and torch agree: half to even


def test_levels_per_bit_width_and_clipping_at_the_range():
    w = torch.linspace(-1, 1, 1001)[None, :]
    for bits in Q.BITS:
        assert len(Q.quantize(w, bits, True, "tensor").dequantize().unique()) == 2 ** bits - 1
        assert len(Q.quantize(w, bits, False, "tensor").dequantize().unique()) == 2 ** bits
    q = Q.quantize(w, 4, True, "tensor", clip=0.5, scale_dtype="fp32")       # half the range: the rest is clipped
    assert q.dequantize().max().item() == pytest.approx(0.5) and q.codes.max() == 15 and q.codes.min() == 1
    assert Q.code_range(2, True) == (1, 3) and Q.code_range(2, False) == (0, 3)


def test_zero_is_exact_and_an_all_zero_group_stays_zero():
    w = weights(4, 32)
    w[0] = 0.0
    w[1, 5] = 0.0
    w[2] = w[2].abs() + 0.1        # all positive: the asymmetric range still includes 0
    for symmetric in (True, False):
        d = Q.quantize(w, 3, symmetric, "group", 8).dequantize()
        assert torch.equal(d[0], torch.zeros(32)) and d[1, 5] == 0


def test_clip_search_never_loses_to_any_single_ratio():
    w = weights(8, 128, seed=1)
    w[0, 0] = 1.0                                       # one large weight: clipping pays for row 0
    for bits in (2, 3, 4):
        searched = (Q.fake_quantize(w, bits=bits, symmetric=False, granularity="group", group_size=32,
                                    clip="search") - w).square().reshape(8, 4, 32).sum(-1)
        for ratio in Q.CLIP_RATIOS:
            fixed = (Q.fake_quantize(w, bits=bits, symmetric=False, granularity="group", group_size=32,
                                     clip=ratio) - w).square().reshape(8, 4, 32).sum(-1)
            assert (searched <= fixed + 1e-12).all()
    plain = Q.weight_mse(w, Q.quantize(w, 3, False, "channel"))
    assert Q.weight_mse(w, Q.quantize(w, 3, False, "channel", clip="search")) < plain


def test_finer_groups_and_more_bits_give_smaller_error():
    w = weights(32, 256, seed=2)
    mse = {g: Q.weight_mse(w, Q.quantize(w, 4, False, *g)) for g in
           [("tensor", None), ("channel", None), ("group", 128), ("group", 32)]}
    assert list(mse.values()) == sorted(mse.values(), reverse=True)
    by_bits = [Q.weight_mse(w, Q.quantize(w, b, False, "group", 32)) for b in Q.BITS]
    assert by_bits == sorted(by_bits, reverse=True)


@pytest.mark.parametrize("bits", Q.BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_to_nearest_error_is_at_most_half_a_step(bits, symmetric):
    w = weights(8, 64, seed=bits)
    q = Q.quantize(w, bits, symmetric, "group", 16, scale_dtype="fp32")
    step = q.scale.float().repeat_interleave(16, dim=1)
    assert ((q.dequantize() - w).abs() <= step / 2 * (1 + 1e-5)).all()


def test_tiny_weights_keep_fine_fp16_scales_and_huge_ones_need_a_wider_dtype():
    w = weights(8, 64) * 1e-3                              # scales ~1e-6: fp16 subnormals, not clamped up
    fp16, fp32 = Q.quantize(w, 8, scale_dtype="fp16"), Q.quantize(w, 8, scale_dtype="fp32")
    assert Q.weight_mse(w, fp16) < 1.5 * Q.weight_mse(w, fp32)
    with pytest.raises(ValueError, match=r"beyond the range of scale_dtype torch.float16 \(max 6.55e\+04\); allowed: a wider"):
        Q.quantize(weights() * 1e8, 8, scale_dtype="fp16")
    assert torch.isfinite(Q.quantize(weights() * 1e8, 8, scale_dtype="fp32").dequantize()).all()


def test_scales_are_stored_in_their_dtype_and_used_rounded():
    w = weights()
    q = Q.quantize(w, 4, False, "group", 16, scale_dtype="fp16")
    assert q.scale.dtype == torch.float16 and q.zero_point.dtype == torch.uint8
    expected = (q.codes.float().reshape(16, 4, 16) - q.zero_point.float()[..., None]) * q.scale.float()[..., None]
    assert torch.equal(q.dequantize(), expected.reshape(16, 64))
    one_row = Q.quantize(w[0], 8)                        # a 1-D weight is one row and comes back 1-D
    assert one_row.dequantize().shape == (64,)


def test_bad_input_names_the_argument_and_what_is_allowed():
    w = weights()
    with pytest.raises(ValueError, match=r"bits=5 .*allowed: \(2, 3, 4, 8\)"):
        Q.quantize(w, 5)
    with pytest.raises(ValueError, match=r"bits=True"):
        Q.quantize(w, True)
    with pytest.raises(ValueError, match=r"group_size=48 does not divide the input dimension 64.*allowed: \[1, 2, 4, 8, 16, 32, 64\]"):
        Q.quantize(w, 4, granularity="group", group_size=48)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        Q.quantize(w, 4, granularity="group")
    with pytest.raises(ValueError, match="only used with granularity='group'"):
        Q.quantize(w, 4, granularity="channel", group_size=32)
    with pytest.raises(ValueError, match="granularity='row'; allowed"):
        Q.quantize(w, 4, granularity="row")
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[3, 3] = bad
        with pytest.raises(ValueError, match="weight holds NaN or infinite"):
            Q.quantize(w2, 8)
        with pytest.raises(ValueError, match="weight holds NaN or infinite"):
            Q.nf4_quantize(w2)
    with pytest.raises(ValueError, match="weight is empty"):
        Q.quantize(torch.empty(0, 4), 8)
    with pytest.raises(ValueError, match="must be 2-D"):
        Q.quantize(torch.ones(2, 3, 4), 8)
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize(torch.ones(3, 4, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="clip must be a ratio in \\(0, 1\\] or 'search'"):
        Q.quantize(w, 8, clip=1.5)
    with pytest.raises(ValueError, match="scale_dtype='fp8'; allowed"):
        Q.quantize(w, 8, scale_dtype="fp8")


# ---------------------------------------------------------------------------------------------
# 2. Packing and exact bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2 ** 16))
def test_pack_unpack_roundtrip_is_exact_at_every_bit_width_and_length(bits, n, seed):
    codes = torch.randint(0, 2 ** bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = Q.pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == Q.packed_bytes(n, bits) == -(-n * bits // 8)
    assert torch.equal(Q.unpack_codes(packed, bits, n), codes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 9), groups=st.integers(1, 5), group_size=st.sampled_from([1, 3, 7, 8, 32]),
       bits=st.sampled_from(Q.BITS), symmetric=st.booleans(), scale_dtype=st.sampled_from(["fp16", "fp32"]),
       seed=st.integers(0, 1000))
def test_stored_arrays_give_back_the_same_weights_and_the_formula_counts_their_bytes(rows, groups, group_size, bits,
                                                                                   symmetric, scale_dtype, seed):
    w = weights(rows, groups * group_size, seed)
    q = Q.quantize(w, bits, symmetric, "group", group_size, scale_dtype=scale_dtype)
    back = Q.QuantizedTensor.from_state(q.to_state())
    assert torch.equal(back.codes, q.codes) and torch.equal(back.dequantize(), q.dequantize())
    scale_bytes = 2 if scale_dtype == "fp16" else 4
    assert q.nbytes == Q.quantized_bytes(w.shape, bits, "group", group_size, symmetric, scale_bytes)
    n_groups = rows * groups
    assert q.nbytes == -(-w.numel() * bits // 8) + n_groups * scale_bytes + (0 if symmetric else -(-n_groups * bits // 8))


def test_bit_layout_is_little_endian():
    assert Q.pack_codes(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert Q.pack_codes(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0b10010011]
    assert Q.pack_codes(torch.arange(8), 3).numel() == 3           # 8 three-bit codes fill 3 bytes
    with pytest.raises(ValueError, match="codes must lie in 0 .. 15 for bits=4"):
        Q.pack_codes(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="take 2 bytes, got 3"):
        Q.unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, 4)


# ---------------------------------------------------------------------------------------------
# 3. Codebooks


def test_nf4_from_its_definition_is_the_qlora_papers_table():
    levels = Q.nf4_codebook()
    assert levels.shape == (16,) and (levels[1:] > levels[:-1]).all()
    assert torch.allclose(levels, torch.tensor(Q.NF4_PAPER_TABLE), atol=1e-6, rtol=0)
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7 and (levels == 0).sum() == 1
    assert levels.min() == -1 and levels.max() == 1


def test_nf4_rounds_to_the_nearest_level_of_each_group():
    w = weights(8, 128)
    q = Q.nf4_quantize(w, group_size=64, scale_dtype="fp32")
    absmax = w.reshape(8, 2, 64).abs().amax(-1)
    assert torch.equal(q.scale, absmax) and q.nbytes == 8 * 128 // 2 + 16 * 4 + 16 * 4
    normalised = w.reshape(8, 2, 64) / absmax[..., None]
    brute = (normalised[..., None] - Q.nf4_codebook()).abs().argmin(-1)
    assert torch.equal(q.codes.reshape(8, 2, 64).long(), brute)
    assert torch.equal(Q.CodebookTensor.from_state(q.to_state()).dequantize(), q.dequantize())


def test_nf4_beats_uniform_int4_on_normal_weights_at_equal_bits():
    w = weights(64, 256, seed=5)
    nf4 = Q.weight_mse(w, Q.nf4_quantize(w, 64))
    int4 = Q.weight_mse(w, Q.quantize(w, 4, True, "group", 64))
    assert nf4 < int4


def test_kmeans_is_deterministic_lowers_its_error_and_beats_one_uniform_grid_per_matrix():
    w = weights(32, 128, seed=6)
    q = Q.kmeans_quantize(w, 4)
    assert torch.equal(q.codebook, Q.kmeans_quantize(w, 4).codebook)
    assert q.codebook.dtype == torch.float16 and (q.codebook[1:] >= q.codebook[:-1]).all()
    linear_init = Q.kmeans_quantize(w, 4, iterations=0)
    assert torch.allclose(linear_init.codebook.float(), torch.linspace(w.min(), w.max(), 16), atol=1e-3)
    assert Q.weight_mse(w, q) < 0.8 * Q.weight_mse(w, linear_init)
    assert Q.weight_mse(w, q) < Q.weight_mse(w, Q.quantize(w, 4, False, "tensor"))
    assert q.nbytes == 32 * 128 // 2 + 16 * 2
    brute = (w[..., None] - q.codebook.float()).abs().argmin(-1)   # every weight at its nearest centroid
    assert torch.equal(q.codes.long(), brute)


def test_float8_is_torchs_e4m3_cast_of_the_scaled_rows():
    w = weights(8, 32, seed=7)
    q = Q.float8_quantize(w, scale_dtype="fp32")
    scale = w.abs().amax(1, keepdim=True) / 448
    assert torch.equal(q.values, (w / scale).to(torch.float8_e4m3fn))
    assert q.nbytes == 8 * 32 + 8 * 4 and q.values.abs().float().amax(1).eq(448).all()
    assert Q.weight_mse(w, q) < Q.weight_mse(w, Q.quantize(w, 4, True, "channel"))


# ---------------------------------------------------------------------------------------------
# 4. Schemes and whole models


def test_scheme_names_round_trip_and_bad_names_say_what_is_allowed():
    for name in Q.SCHEMES + ("int4-g32-sym-clip", "int3-g64-gptq", "int8-tensor"):
        assert Q.get_scheme(name).name == name
    for bad in ("int5-g32", "int4-g0", "int4-row", "nf4-channel", "kmeans9", "int4-g32-fast", "fp8"):
        with pytest.raises(ValueError, match="is not a scheme name; allowed"):
            Q.get_scheme(bad)


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 17, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32,
                            "activation": "relu2", "tie_weights": False, **overrides})).eval()


def test_quantize_model_changes_only_the_block_linears_and_counts_every_byte():
    model = small_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, info = Q.quantize_model(model, "int4-g16")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())      # the original is untouched
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{name}.weight" for name in Q.quantizable_layers(model)}
    expected = sum(Q.quantized_bytes(tuple(layer.weight.shape), 4, "group", 16, False, 2)
                   for layer in Q.quantizable_layers(model).values())
    assert info["quantized_bytes"] == expected
    n_float = sum(p.numel() for p in model.parameters()) - sum(l.weight.numel() for l in Q.quantizable_layers(model).values())
    assert info["float_bytes"] == 4 * n_float and info["total_bytes"] == expected + 4 * n_float
    assert info["float32_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    layers = Q.quantizable_layers(model)
    squared = sum((layers[n].weight - q.dequantize()).square().sum().item() for n, q in info["quantized"].items())
    assert info["weight_mse"] == pytest.approx(squared / sum(layer.weight.numel() for layer in layers.values()))
    _, with_head = Q.quantize_model(model, "int8-channel", include_head=True)
    assert "lm_head" in with_head["quantized"] and with_head["float_bytes"] < info["float_bytes"]
    with pytest.raises(ValueError, match="lm_head is tied to the token embedding"):
        Q.quantize_model(small_gpt(tie_weights=True), "int8-channel", include_head=True)
    with pytest.raises(TypeError, match="model must be a labkit.model.GPT"):
        Q.quantize_model(torch.nn.Linear(4, 4), "int8-channel")
    with pytest.raises(ValueError, match="calibration is only used by GPTQ"):
        Q.quantize_model(model, "int8-channel", calibration=torch.zeros(2, 8, dtype=torch.long))


@pytest.mark.parametrize("scheme", ["int8-channel-sym", "int3-g8", "int2-g16-clip", "nf4-g16", "kmeans3",
                                    "fp8-channel"])
def test_saved_file_is_the_computed_bytes_plus_a_fixed_overhead_and_loads_back_identically(scheme, tmp_path):
    model = small_gpt(tie_weights=scheme == "int3-g8")
    out, info = Q.quantize_model(model, scheme)
    account = Q.save_quantized(out, info, tmp_path / "q.pt")
    assert account["tensor_bytes"] == info["total_bytes"]
    assert account["file_bytes"] == (tmp_path / "q.pt").stat().st_size
    # torch.save's zip container: a fixed cost per stored tensor (headers, 64-byte alignment, pickled names), never
    # proportional to the data
    assert 0 < account["overhead_bytes"] < 1200 * account["n_tensors"] + 4096
    loaded, quantized = Q.load_quantized(tmp_path / "q.pt")
    x = torch.randint(0, 17, (3, 16))
    assert torch.equal(loaded(x)[0], out(x)[0])
    assert set(quantized) == set(info["quantized"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Q.load_quantized(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"info\['quantized'\]\['blocks.0.attn.qkv'\] is not what model holds"):
        Q.save_quantized(model, info, tmp_path / "wrong.pt")          # the float model with the quantized info
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a file written by labkit.quantize.save_quantized"):
        Q.load_quantized(tmp_path / "other.pt")


def test_overhead_does_not_grow_with_the_data(tmp_path):
    small, big = small_gpt(), small_gpt(n_embd=64)
    accounts = [Q.save_quantized(*Q.quantize_model(m, "int4-g16"), tmp_path / f"{i}.pt") for i, m in
                enumerate((small, big))]
    assert accounts[1]["tensor_bytes"] > 2 * accounts[0]["tensor_bytes"]
    assert abs(accounts[1]["overhead_bytes"] - accounts[0]["overhead_bytes"]) < 256


def test_quantization_sweep_rows_are_each_schemes_model_on_the_same_windows():
    from labkit.evaluate import evaluation_set, score

    model = small_gpt()
    eval_set = evaluation_set(torch.randint(0, 17, (6000,), generator=torch.Generator().manual_seed(0)), window=16)
    rows = Q.quantization_sweep(model, eval_set, ("int8-channel", "int2-g16", "nf4-g16"))
    assert [r["scheme"] for r in rows] == ["float32", "int8-channel", "int2-g16", "nf4-g16"]
    assert rows[0]["total_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    for r in rows[1:]:
        quantized, info = Q.quantize_model(model, r["scheme"])
        assert r["total_bytes"] == info["total_bytes"] and r["loss"] == score(quantized, eval_set).loss
        assert r["loss_minus_float"] == pytest.approx(r["loss"] - rows[0]["loss"]) and r["diff_se"] > 0
    assert rows[1]["total_bytes"] > rows[3]["total_bytes"] > rows[2]["total_bytes"]
