import numpy as np
import pytest

from onegen_core.prepare.labelling import passage_negatives, rank_window_negatives, window_ranks


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


@pytest.mark.parametrize("n, window, ranks", [
    (6000, (0.9975, 1.0), (5985, 6000)),  # App. F: ranks 5985-6000 of ~6000
    (15, (0.5, 1.0), (7, 15)),
    (15, (0.9975, 1.0), (14, 15)),  # a small corpus keeps one rank, the last
    (3, (0.0, 0.1), (0, 1)),  # a window that rounds to nothing keeps one rank
    (1, (0.5, 1.0), (0, 1)),
])
def test_window_fractions_become_ranks_never_empty_never_past_the_list(n, window, ranks):
    assert window_ranks(n, window) == ranks


def test_passage_negatives_rank_the_other_passages_and_cap_them():
    passages = ["0", "10", "25", "70"]
    # 3 others ranked, window (0.5, 1) = ranks 1..2, capped at 1: the second most similar other passage
    assert passage_negatives(passages, angle_encoder, (0.5, 1.0), 1) == {"0": ["25"], "10": ["25"], "25": ["0"],
                                                                         "70": ["10"]}
    assert passage_negatives(passages, angle_encoder, (0.5, 1.0), 5)["70"] == ["10", "0"]


def test_a_lone_passage_has_no_negatives_and_nothing_is_encoded():
    def never(texts):
        raise AssertionError("encoded")

    assert passage_negatives(["only"], never, (0.5, 1.0), 4) == {}
