"""labkit.quantize on the course's real reference model (the `baby` fixture loads it, training it first on a fresh clone).

Lab 05's "what must hold", on a smaller slice of its yardstick (1 window in 32 of the validation split): int8
per-channel within 0.5% of float32 perplexity, 4-bit group-32 RTN within 5%, GPTQ no worse than RTN. ~10 s.
"""
from __future__ import annotations

import pytest

from labkit import prune
from labkit import quantize as Q
from labkit.evaluate import evaluation_set, paired_difference



@pytest.fixture(scope="module")
def eval_set(shakespeare):
    return evaluation_set(shakespeare.val, window=64, every=32)


@pytest.fixture(scope="module")
def float_ppl(baby, eval_set):
    return Q.validation_perplexity(baby, eval_set)


def test_int8_per_channel_is_within_half_a_percent_and_4_bit_g32_within_5(baby, eval_set, float_ppl):
    for scheme, tolerance in (("int8-channel", 0.005), ("int8-channel-sym", 0.005), ("int4-g32", 0.05)):
        model, info = Q.quantize_model(baby, scheme)
        ppl = Q.validation_perplexity(model, eval_set)["perplexity"]
        assert ppl / float_ppl["perplexity"] - 1 < tolerance, scheme
        assert info["quantized_bytes"] == sum(q.nbytes for q in info["quantized"].values())


def test_gptq_4_bit_g32_is_no_worse_than_rtn_and_every_layers_output_error_drops(baby, shakespeare, eval_set):
    calibration = prune.calibration_batches(shakespeare, 32, 64)
    rtn_model, rtn = Q.quantize_model(baby, "int4-g32")
    gptq_model, gptq = Q.quantize_model(baby, "int4-g32-gptq", calibration=calibration)
    gain = paired_difference(Q.validation_perplexity(rtn_model, eval_set)["result"],
                             Q.validation_perplexity(gptq_model, eval_set)["result"])
    assert gain["difference"] > -2 * gain["standard_error"]          # GPTQ not worse than RTN beyond the noise
    from labkit.gptq import output_errors
    held_out = prune.calibration_batches(shakespeare, 16, 64, seed=1)  # other training text than GPTQ saw
    e_rtn, e_gptq = output_errors(baby, rtn["quantized"], held_out), output_errors(baby, gptq["quantized"], held_out)
    assert all(e_gptq[name] < e_rtn[name] for name in e_rtn)
