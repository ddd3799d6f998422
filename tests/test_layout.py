"""The SPACE step layout against the worked example of docs/spec/SPACE.md §3.7 and its own invariants."""

import torch

from tests.paper_chain import ChunkLayout, candidate_index, group_index, retained_cache_indices, step_layout


def visible(allowed, row):
    return allowed[row].nonzero().flatten().tolist()


def test_k2_table_of_spec_3_7():
    allowed, positions = step_layout(n=3, k=2)
    assert allowed.shape == (11, 11)
    assert positions.tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 4, 5, 6]
    expected_visible = {
        0: [0], 1: [0, 1], 2: [0, 1, 2],
        3: [0, 1, 2, 3],            # G0.m0
        4: [0, 1, 2, 3, 4],         # G0.m1
        5: [0, 1, 2, 5],            # c0
        6: [0, 1, 2, 5, 6],         # G1.m0
        7: [0, 1, 2, 5, 6, 7],      # G1.m1
        8: [0, 1, 2, 5, 8],         # c1
        9: [0, 1, 2, 5, 8, 9],      # G2.m0
        10: [0, 1, 2, 5, 8, 9, 10], # G2.m1
    }
    for row, keys in expected_visible.items():
        assert visible(allowed, row) == keys, row


def test_positions_equal_visible_count_minus_one():
    # The original derives positions from the mask; our table must agree for every n and k.
    for k in (1, 2, 3, 5):
        for n in (1, 2, 7):
            allowed, positions = step_layout(n, k)
            assert torch.equal(positions, allowed.sum(dim=1) - 1)


def test_candidates_see_exactly_their_ar_context():
    n, k = 4, 3
    allowed, positions = step_layout(n, k)
    for i in range(k):
        row = candidate_index(n, k, i)
        assert visible(allowed, row) == list(range(n)) + [candidate_index(n, k, j) for j in range(i + 1)]
        assert positions[row] == n + i
    for g in range(k + 1):
        for j in range(k):
            row = group_index(n, k, g, j)
            expected = list(range(n)) + [candidate_index(n, k, i) for i in range(g)]
            expected += [group_index(n, k, g, m) for m in range(j + 1)]
            assert visible(allowed, row) == expected
            assert positions[row] == n + g + j


def test_retained_cache_indices_example():
    assert retained_cache_indices(n_old=4, accepted=2, k=2) == [0, 1, 2, 3, 6, 9]
    assert retained_cache_indices(n_old=3, accepted=0, k=2) == [0, 1, 2]


def test_chunk_layout_is_the_tail_of_the_full_layout():
    for k in (1, 2, 5):
        chunk = ChunkLayout.build(k)
        for n in (1, 3, 9):
            allowed, positions = step_layout(n, k)
            tail_rows = allowed[n - 1 :]
            assert tail_rows[:, : n - 1].all()  # every fed row sees the whole cached prefix
            assert torch.equal(tail_rows[:, n - 1 :], chunk.allowed)
            assert torch.equal(positions[n - 1 :], chunk.position_offsets + n - 1)
            assert chunk.candidate_rows.tolist() == [candidate_index(n, k, i) - (n - 1) for i in range(k)]
            assert chunk.group_rows(2 if k >= 2 else 1).tolist()[0] == group_index(n, k, 2 if k >= 2 else 1) - (n - 1)


def test_token_template_fills_groups_only():
    chunk = ChunkLayout.build(2)
    ids = chunk.token_template(torch.tensor([50, 51]))
    assert ids.tolist() == [0, 50, 51, 0, 50, 51, 0, 50, 51]
