"""labkit.prune on the course's real reference model (the `baby` fixture loads it, training it first on a fresh clone).

Small and fast on purpose (a few seconds): lab 04 leans on these facts, the notebook measures the rest.
"""
from __future__ import annotations

import torch
import torch.nn.utils.prune as torch_prune

from labkit import prune
from labkit.evaluate import evaluation_set, paired_difference, score


def test_the_zoo_models_masks_are_torchs(baby):
    layers = prune.prunable_layers(baby)
    assert len(layers) == 16 and sum(layer.weight.numel() for layer in layers.values()) == 4 * 12 * 128 * 128
    masks = prune.layer_masks(baby, 0.5)
    for name, layer in layers.items():
        reference = torch.nn.Linear(1, 1, bias=False)
        reference.weight = torch.nn.Parameter(layer.weight.detach().clone())
        torch_prune.l1_unstructured(reference, "weight", amount=0.5)
        assert torch.equal(masks[name], reference.weight_mask.bool()), name


def test_wanda_beats_magnitude_and_both_beat_random_one_shot_at_half_sparsity(baby, shakespeare):
    """Lab 04's claim, on a smaller slice of the lab's yardstick (1 window in 64), by more than 3 standard errors."""
    eval_set = evaluation_set(shakespeare.val, window=64, every=64)
    calibration = prune.calibration_batches(shakespeare, 32, 64)
    loss = {method: score(prune.pruned_copy(baby, prune.layer_masks(baby, 0.5, method, calibration=calibration)),
                          eval_set) for method in prune.METHODS}
    wanda_gain = paired_difference(loss["magnitude"], loss["wanda"])
    assert wanda_gain["difference"] > 3 * wanda_gain["standard_error"]
    random_loss = paired_difference(loss["random"], loss["magnitude"])
    assert random_loss["difference"] > 3 * random_loss["standard_error"]
