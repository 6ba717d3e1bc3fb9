import numpy as np
import pytest

from onegen_core.prepare.labelling import rank_window_negatives


def angle_encoder(texts):
    # each text is an angle in degrees: similarity falls as the angle grows
    a = np.radians([float(t) for t in texts])
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_window_skips_the_positive_and_takes_far_ranks():
    corpus = ["0", "10", "20", "30", "40", "50", "60", "70"]
    neg = rank_window_negatives(["0"], corpus, angle_encoder, window=(4, 6))
    # "0" itself is excluded; ranked by similarity: 10, 20, 30, 40, 50, 60, 70 → ranks 4..5 are 50, 60
    assert neg == [[5, 6]]


def test_bad_window():
    with pytest.raises(ValueError):
        rank_window_negatives(["0"], ["0", "10"], angle_encoder, window=(1, 5))
