import numpy as np

from siamese.episodes import sample_episode

# 5 alphabets x 6 characters x 12 train drawers; image id = 1000 a + 100 c + drawer
GROUPS = [[1000 * a + 100 * c + np.arange(12) for c in range(6)] for a in range(5)]


def test_an_episode_pairs_two_drawers_of_each_character_within_its_alphabet():
    support, query, block, turns = sample_episode(np.random.default_rng(0), GROUPS, 3, 4)
    assert len(support) == 12 and set(block) == {0, 1, 2} and not turns.any()
    assert (support != query).all()
    assert (support // 100 == query // 100).all()  # same character, other drawer
    for b in range(3):  # each block is one alphabet, distinct characters
        chars = support[block == b] // 100
        assert len(set(chars // 10)) == 1 and len(set(chars)) == 4


def test_rotations_make_each_alphabet_at_each_quarter_turn_a_block_of_its_own():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        support, _, block, turns = sample_episode(rng, GROUPS, 4, 2, rotations=4)
        for b in range(4):
            assert len(set(turns[block == b])) == 1
        seen |= {(s // 1000, t) for s, t in zip(support, turns, strict=True)}
    assert seen == {(a, t) for a in range(5) for t in range(4)}
