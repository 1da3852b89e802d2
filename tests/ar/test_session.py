"""DecodeSession: cached multi-token forwards equal a from-scratch forward; masks expose generated tokens only."""

import pytest
import torch

import mmeff
from mmeff.ar.session import DecodeSession
from mmeff.errors import InputError
from mmeff.testing.ar import tiny_ar_image

PROMPTS = ["red circle", "two blue squares left of star"]


@pytest.fixture(scope="module")
def model():
    return tiny_ar_image()


@torch.no_grad()
def test_cached_forward_equals_a_full_recompute(model):
    adapter = mmeff.wrap(model).adapter
    codes = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    ids, mask = model.prompt_ids(PROMPTS, True)
    rows = torch.cat([codes, codes]) + model.config.code_offset
    full_mask = torch.cat([mask, torch.ones_like(rows)], 1)
    position_ids = (full_mask.cumsum(1) - 1).clamp_min(0)
    reference = model.lm(input_ids=torch.cat([ids, rows], 1), attention_mask=full_mask,
                         position_ids=position_ids).logits[:, ids.shape[1] - 1 : -1, model.config.code_offset :]
    session = DecodeSession(adapter, PROMPTS, 3.0)
    first = session.forward(codes[:, :5], list(range(5)))
    rest = session.forward(codes[:, 5:15], list(range(5, 15)))  # several tokens per forward
    ours = torch.cat([session.first_logits[:, None], first, rest], 1)
    assert torch.allclose(ours, reference, atol=1e-5)


@torch.no_grad()
def test_rollback_then_refeed_gives_the_same_logits(model):
    adapter = mmeff.wrap(model).adapter
    session = DecodeSession(adapter, PROMPTS[:1], None)
    codes = torch.tensor([[1, 2, 3, 4]])
    a = session.forward(codes, [0, 1, 2, 3])
    session.rollback(2)
    assert session.slot_pos == [0, 1]
    b = session.forward(codes[:, 2:], [2, 3])
    assert torch.allclose(a[:, 2:], b, atol=1e-5)
    with pytest.raises(ValueError, match="cannot roll back"):
        session.rollback(10)


@torch.no_grad()
def test_visibility_hides_proxies_and_later_positions(model):
    adapter = mmeff.wrap(model).adapter
    session = DecodeSession(adapter, PROMPTS[:1], None)
    session.forward(torch.tensor([[1, 2]]), [0, 1])
    session.forward(torch.tensor([[3, 3]]), [2, 7], proxies=[False, True])  # (0,2) real, proxy at (1,3)
    session.slot_pos += [4]
    session.slot_proxy += [False]
    visible = session.visibility([4], [False])[0, 0, session.prefix_mask.shape[1] :]
    assert visible.tolist() == [True, True, True, False, True]  # proxy hidden, itself visible
    session.slot_pos += [5]
    session.slot_proxy += [False]
    visible = session.visibility([5], [False])[0, 0, session.prefix_mask.shape[1] :]
    assert visible.tolist() == [True, True, True, False, True, True]


def test_guidance_without_unconditional_path_is_refused():
    from dataclasses import replace

    model = tiny_ar_image()
    model.config = replace(model.config, null_caption=False)
    pipe = mmeff.wrap(model)
    with pytest.raises(InputError, match="unconditional"):
        pipe.generate_images(["red circle"], guidance_scale=2.0, seed=0)
    assert len(pipe.generate_images(["red circle"], guidance_scale=None, seed=0)) == 1
