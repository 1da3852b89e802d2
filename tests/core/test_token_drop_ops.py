import torch

from mmeff.token_drop.ops import causal_mask, compact_positions, gather_tokens, left_pad_indices


def test_left_pad_indices_keeps_order_and_pads_left():
    keep = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    idx, valid = left_pad_indices(keep)
    assert idx.tolist() == [[0, 2, 3], [0, 0, 1]]
    assert valid.tolist() == [[True, True, True], [False, False, True]]


def test_gather_tokens_picks_rows():
    x = torch.arange(2 * 4 * 3).view(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 1]])
    out = gather_tokens(x, idx)
    assert torch.equal(out[0, 0], x[0, 3]) and torch.equal(out[1, 1], x[1, 1])


def test_compact_positions_closes_gaps():
    positions = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]])
    present = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7], dtype=torch.bool)
    keep = present.clone()
    keep[0, 3] = False  # drop one token in row 0
    keep[1, 1:3] = False  # two in row 1
    idx, valid = left_pad_indices(keep)
    new, removed = compact_positions(positions, idx, valid, present)
    assert removed.tolist() == [1, 2]
    assert new[0][valid[0]].tolist() == [0, 1, 2, 3]
    assert new[1][valid[1]].tolist() == [0, 1, 2, 3, 4]


def test_causal_mask_conventions():
    key_valid = torch.tensor([[False, True, True, True]])
    m = causal_mask(key_valid, 2, as_bool=True, dtype=torch.float32)
    assert m.shape == (1, 1, 2, 4)
    assert m[0, 0].tolist() == [[False, True, True, False], [False, True, True, True]]
    f = causal_mask(key_valid, 2, as_bool=False, dtype=torch.float32)
    assert f[0, 0, 0, 1] == 0 and f[0, 0, 0, 0] == torch.finfo(torch.float32).min
