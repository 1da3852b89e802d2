"""The shared decode loop, driven through ``model.generate(custom_generate=...)`` as users without our wrapper do."""

from __future__ import annotations

import pytest
import torch
from transformers import TextIteratorStreamer

from mmeff.contrastive import contrastive_generate
from mmeff.errors import ConfigError
from mmeff.testing import tiny_llava
from mmeff.testing.plugin_tests import PROMPTS, sample_images


@pytest.fixture(scope="module")
def setup():
    import mmeff

    model, processor = tiny_llava(layers=4)
    pipe = mmeff.wrap(model, processor)
    inputs = pipe.adapter.build_inputs(sample_images(), PROMPTS)
    negative = {**inputs, "pixel_values": torch.randn_like(inputs["pixel_values"])}
    return model, processor, inputs, negative


def test_custom_generate_with_alpha_zero_is_plain_generate(setup):
    model, processor, inputs, negative = setup
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    result: list = []
    ours = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
                          custom_generate=contrastive_generate, cd_negative=negative, cd_alpha=0.0, cd_result=result)
    assert torch.equal(ours, plain)
    assert result[0].rows == 4 and result[0].streams == 1  # one batch of 2 x 2 rows


def test_contrast_changes_tokens_and_sampling_applies_after_it(setup):
    model, processor, inputs, negative = setup
    kw = dict(max_new_tokens=6, pad_token_id=processor.tokenizer.pad_token_id, custom_generate=contrastive_generate,
              cd_negative=negative, cd_alpha=5.0, cd_beta=1e-3)
    greedy = model.generate(**inputs, do_sample=False, **kw)
    plain = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert not torch.equal(greedy, plain)
    torch.manual_seed(0)
    a = model.generate(**inputs, do_sample=True, temperature=1.0, **kw)
    torch.manual_seed(0)
    b = model.generate(**inputs, do_sample=True, temperature=1.0, **kw)
    assert torch.equal(a, b)
    torch.manual_seed(1)  # a near-zero temperature on the contrast is greedy on the contrast
    cold = model.generate(**inputs, do_sample=True, temperature=1e-4, top_k=0, **kw)
    assert torch.equal(cold, greedy)


def test_streamer_receives_every_token(setup):
    model, processor, inputs, negative = setup
    one = {k: v[:1] for k, v in inputs.items()}
    neg = {k: v[:1] for k, v in negative.items()}
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, timeout=30)
    out = model.generate(**one, max_new_tokens=4, do_sample=False, cd_streamer=streamer,
                         pad_token_id=processor.tokenizer.pad_token_id, custom_generate=contrastive_generate,
                         cd_negative=neg)
    streamed = "".join(streamer)
    expected = processor.tokenizer.decode(out[0, one["input_ids"].shape[1]:], skip_special_tokens=True)
    assert streamed.split() == expected.split() and expected


def test_rows_stop_at_eos_and_then_pad(setup):
    model, processor, inputs, negative = setup
    tok = processor.tokenizer
    # make EOS the only plausible token once any row has produced 2 tokens: a logits processor after the contrast
    from transformers import LogitsProcessor, LogitsProcessorList

    class ForceEos(LogitsProcessor):  # row 0 ends after 2 tokens, row 1 after 4
        def __call__(self, input_ids, scores):
            produced = input_ids.shape[1] - inputs["input_ids"].shape[1]
            for row, at in ((0, 2), (1, 4)):
                if produced == at:
                    scores[row] = float("-inf")
                    scores[row, tok.eos_token_id] = 0
            return scores

    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                         logits_processor=LogitsProcessorList([ForceEos()]), custom_generate=contrastive_generate,
                         cd_negative=negative)
    new = out[:, inputs["input_ids"].shape[1]:]
    assert new.shape[1] == 5, "the loop stops once every row has ended"
    assert new[0, 2] == tok.eos_token_id and (new[0, 3:] == tok.pad_token_id).all()
    assert new[1, 4] == tok.eos_token_id and (new[1, :4] != tok.pad_token_id).all()


def test_stopping_criteria_from_generate_are_applied(setup):
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, processor, inputs, negative = setup

    class AfterTwo(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            done = input_ids.shape[1] - inputs["input_ids"].shape[1] >= 2
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id,
                         stopping_criteria=StoppingCriteriaList([AfterTwo()]), custom_generate=contrastive_generate,
                         cd_negative=negative)
    assert out.shape[1] - inputs["input_ids"].shape[1] == 2


def test_negative_alpha_is_refused(setup):
    model, processor, inputs, negative = setup
    with pytest.raises(ConfigError, match="cd_alpha"):
        model.generate(**inputs, max_new_tokens=2, custom_generate=contrastive_generate, cd_negative=negative,
                       cd_alpha=-1.0, pad_token_id=processor.tokenizer.pad_token_id)
