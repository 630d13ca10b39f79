"""Self-checks for the exercises, the fallback that keeps a student copy running, and the release tool.

In a lab, an exercise is a function the learner writes between nbgrader markers. The cell after
it runs a check on *the learner's function* (never on labkit's reference: a check of the
reference would pass everyone):

    check_cross_entropy(my_cross_entropy)        # prints "passed" or what is wrong, on a small example

and the lab continues with

    cross_entropy_fn = use_or_fallback(my_cross_entropy, check_cross_entropy, labkit.losses.cross_entropy)

which returns the learner's function if it passes, else labkit's reference with a note naming it:
a student copy with unsolved exercises still runs top to bottom and still draws every plot.
Graded cells call `labkit.autograde.grade("cross_entropy", my_cross_entropy)` instead: the same
check in a fresh Python process, so names rebound in the notebook don't count.

    python -m labkit.grading release notebooks/ student/   # student copies: solutions and hidden tests removed

The package: `core` (run_check, comparing, hints, tripwires), `checks` (one check per exercise),
`release` (student copies, graded-cell upgrade).
"""
from labkit.grading.checks import (check_absmax_quantize, check_adam_training_bytes, check_bits_per_char,
                                   check_causal_attention, check_cross_entropy, check_csr_break_even, check_csr_bytes,
                                   check_distillation_loss, check_gpt_param_count, check_group_quantized_bytes,
                                   check_group_scales, check_kv_cache_bytes, check_largest_batch_that_fits,
                                   check_magnitude_mask, check_mlp_activation_bytes, check_model_bytes,
                                   check_ngram_probabilities, check_params_that_fit, check_perplexity,
                                   check_split_heads, check_teacher_targets_bytes, check_tensor_bytes,
                                   split_heads_reference)
from labkit.grading.checks_compression import (check_huffman_code_lengths,  # lab 07
                                               check_layer_storage_bytes, check_replay_buffer_bytes)
from labkit.grading.checks_pools import (check_arena_lower_bound, check_first_fit,  # lab 08  # noqa: F401
                                         check_kv_blocks_needed, check_release)
from labkit.grading.core import (FAIL, PASS, TODO, Case, CheckResult, Mistake, ReferenceCalled, Returns,
                                 run_check, tripwires, use_or_fallback)
from labkit.grading.release import (HIDDEN_RE, SOLUTION_RE, ReleaseError, release, release_notebook,
                                    strip_solutions, student_copy, upgrade_graded_cells, upgrade_notebook)

__all__ = [
    "check_absmax_quantize", "check_adam_training_bytes", "check_bits_per_char", "check_causal_attention", "check_cross_entropy",
    "check_csr_break_even", "check_csr_bytes", "check_distillation_loss", "check_magnitude_mask",
    "check_gpt_param_count", "check_group_quantized_bytes", "check_group_scales", "check_kv_cache_bytes", "check_largest_batch_that_fits", "check_mlp_activation_bytes", "check_model_bytes",
    "check_ngram_probabilities", "check_params_that_fit", "check_perplexity", "check_split_heads",
    "check_teacher_targets_bytes", "check_tensor_bytes", "split_heads_reference",
    "check_huffman_code_lengths", "check_layer_storage_bytes", "check_replay_buffer_bytes",  # lab 07
    "check_arena_lower_bound", "check_first_fit", "check_kv_blocks_needed", "check_release",  # lab 08
    "FAIL", "PASS", "TODO", "Case", "CheckResult", "Mistake", "ReferenceCalled", "Returns", "run_check", "tripwires",
    "use_or_fallback",
    "HIDDEN_RE", "SOLUTION_RE", "ReleaseError", "release", "release_notebook", "strip_solutions", "student_copy",
    "upgrade_graded_cells", "upgrade_notebook", "main",
]


def main(argv=None) -> int:
    """The instructor command line (see labkit.grading.__main__)."""
    from labkit.grading.__main__ import main as _main
    return _main(argv)
