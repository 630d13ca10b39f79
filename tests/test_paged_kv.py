"""labkit.paged_kv: the block count rule, the paged cache, generation through it, and the serving simulator."""
import math

import pytest

from labkit.paged_kv import kv_blocks_needed


def test_kv_blocks_needed_worked_examples():
    # 40-token prompt, 16-token blocks: 2 full prompt blocks shared, 8 prompt tokens in a partial block
    assert kv_blocks_needed(40, 20, 16, n_sequences=4) == 2 + 4 * math.ceil((8 + 20) / 16)   # 10
    assert kv_blocks_needed(40, 20, 16, n_sequences=4, shared_prefix=False) == 4 * math.ceil(60 / 16)  # 16
    assert kv_blocks_needed(32, 0, 16, n_sequences=3) == 2        # exact blocks, nothing generated
    assert kv_blocks_needed(33, 0, 16, n_sequences=3) == 3        # nobody writes: the partial block stays shared
    assert kv_blocks_needed(32, 1, 16, n_sequences=3) == 2 + 3    # each sequence opens its own block
    assert kv_blocks_needed(0, 17, 16, n_sequences=2) == 2 * 2


@pytest.mark.parametrize("prompt_len", [0, 1, 15, 16, 17, 40])
@pytest.mark.parametrize("output_len", [0, 1, 16, 30])
def test_one_sequence_needs_the_same_with_or_without_sharing(prompt_len, output_len):
    expected = math.ceil((prompt_len + output_len) / 16)
    assert kv_blocks_needed(prompt_len, output_len, 16, 1, shared_prefix=True) == expected
    assert kv_blocks_needed(prompt_len, output_len, 16, 1, shared_prefix=False) == expected


@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt_len=-1, output_len=1, block_size=16), "prompt_len"),
    (dict(prompt_len=1, output_len=1.5, block_size=16), "output_len"),
    (dict(prompt_len=1, output_len=1, block_size=0), "block_size"),
    (dict(prompt_len=1, output_len=1, block_size=16, n_sequences=0), "n_sequences"),
    (dict(prompt_len=True, output_len=1, block_size=16), "prompt_len"),
])
def test_kv_blocks_needed_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        kv_blocks_needed(**kwargs)
