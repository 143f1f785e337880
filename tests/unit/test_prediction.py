"""catdog/prediction.py: the top-losses table."""

import numpy as np


def test_top_losses_lists_the_most_confident_mistakes_first():
    from catdog.prediction import top_losses_table

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.01, 0.99]])
    table = top_losses_table(probs, np.array([0, 1, 1, 0]), ["a", "b", "c", "d"], ["cat", "dog"], n=2).splitlines()
    assert table[2] == "| d | cat | dog | 0.0100 |"
    assert table[3] == "| c | dog | cat | 0.4000 |"
    assert len(table) == 4
