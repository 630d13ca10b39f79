"""Quantization-aware training (QAT): train through the rounding with a straight-through estimator.

    model_qat = qat_model(model, "int2-g32")           # block Linears become FakeQuantLinears (same state_dict)
    tuned, result = qat_fine_tune(model, "int2-g32", steps=200)   # through labkit.train.train; plain Linears back
    labkit.quantize.quantize_model(tuned, "int2-g32")  # stores exactly what the training forward passes used

`FakeQuantLinear` rounds its weight to the scheme's grid in every forward pass and lets the gradient through as
if rounding were the identity (`fake_quant_ste`), except where a weight is clipped; the float weight is what
the optimizer updates. `qat_fine_tune(..., fake_quant=False)` is the control: the same steps and batches
without rounding, which separates what QAT recovers from what extra training alone gives.
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import Tensor, nn

from labkit.model import GPT
from labkit.quantize import (
    Scheme,
    _check_gpt,
    _grouped,
    code_range,
    get_scheme,
    quantizable_layers,
    quantize_tensor,
)

__all__ = ["FakeQuantLinear", "fake_quant_ste", "qat_fine_tune", "qat_model", "strip_fake_quant"]


def fake_quant_ste(weight: Tensor, scheme: str | Scheme) -> Tensor:
    """The weight as `scheme` rounds it in the forward pass; backward: gradient 1 inside the grid's range, 0 outside.

    round() has zero gradient almost everywhere, so training through it needs the straight-through estimator
    ("Estimating or Propagating Gradients Through Stochastic Neurons", Bengio et al. 2013): pretend rounding is
    the identity, except for weights clipped outside the range, whose gradient is 0. The scales are
    recomputed from the current weights at every step and get no gradient.
    """
    s = get_scheme(scheme)
    if s.format != "int":
        raise ValueError(f"fake_quant_ste needs an int scheme, got {s.name!r}")
    with torch.no_grad():
        q = quantize_tensor(weight.detach(), s)
        low = (code_range(s.bits, s.symmetric)[0] - q.zero) * q.scale.float()
        high = (code_range(s.bits, s.symmetric)[1] - q.zero) * q.scale.float()
        w = _grouped(weight.detach().float().reshape(q.codes.shape), q.granularity, q.group_size)
        inside = ((w >= low[..., None]) & (w <= high[..., None])).reshape(weight.shape)
    return q.dequantize().to(weight.dtype) + (weight - weight.detach()) * inside


class FakeQuantLinear(nn.Linear):
    """A Linear that uses its weight rounded to `scheme` in every forward pass (QAT); the float weight is trained."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str | Scheme = "int4-g32"):
        super().__init__(in_features, out_features, bias=bias)
        self.scheme = get_scheme(scheme)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str | Scheme) -> FakeQuantLinear:
        """A FakeQuantLinear holding (sharing) `linear`'s weight and bias."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme)
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, fake_quant_ste(self.weight, self.scheme), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scheme={self.scheme.name!r}"


def _swap_layers(model: GPT, make) -> GPT:
    for name, layer in list(quantizable_layers(model).items()):
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, make(layer))
    return model


def qat_model(model: GPT, scheme: str | Scheme) -> GPT:
    """A copy of `model` whose block Linears are FakeQuantLinears of `scheme` (same state_dict keys)."""
    s = get_scheme(scheme)
    if s.format != "int" or s.method != "rtn":
        raise ValueError(f"QAT fake-quantizes with round to nearest on an int grid; got scheme {s.name!r}")
    return _swap_layers(copy.deepcopy(_check_gpt(model)), lambda layer: FakeQuantLinear.from_linear(layer, s))


def strip_fake_quant(model: GPT) -> GPT:
    """A copy with every FakeQuantLinear back to a plain nn.Linear (same float weights), ready for quantize_model."""
    def plain(layer: nn.Linear) -> nn.Linear:
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.weight, new.bias = layer.weight, layer.bias
        return new
    return _swap_layers(copy.deepcopy(_check_gpt(model)), plain)


def qat_fine_tune(model: GPT, scheme: str | Scheme, steps: int, lr: float = 3e-4, seed: int = 0, corpus=None,
                  progress: bool = True, log=print, fake_quant: bool = True, **settings) -> tuple[GPT, dict]:
    """Train a fake-quant copy of `model` for `steps` AdamW steps (labkit.train.train, the baby preset's batches).

    Returns (the trained model with plain Linears holding the float weights — quantize_model(model, scheme)
    then stores exactly what the forward passes used —, the training result). fake_quant=False trains a plain
    float copy with the same settings and batches: the control that separates what QAT recovers from what
    the extra training steps alone would give.
    """
    from labkit import data as data_mod
    from labkit.train import make_config, train

    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(fake_quant, bool):
        raise TypeError(f"fake_quant must be True (QAT) or False (the float control), got {fake_quant!r}")
    trained = qat_model(model, scheme) if fake_quant else copy.deepcopy(_check_gpt(model))
    settings.setdefault("block_size", min(64, model.block_size))
    cfg = make_config("gpt", "baby", max_iters=int(steps), lr=lr, min_lr=0.0, warmup_iters=min(20, steps // 10),
                      eval_interval=0, seed=seed, progress=progress, **settings)
    corpus = corpus if corpus is not None else data_mod.load_corpus(cfg.corpus)
    what = f"QAT {get_scheme(scheme).name}" if fake_quant else "float fine-tune"
    trained, result = train(cfg, model=trained, corpus=corpus, log=log, desc=f"{what} {steps} steps")
    return (strip_fake_quant(trained) if fake_quant else trained).eval(), result
