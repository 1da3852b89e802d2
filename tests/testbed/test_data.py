import random

import numpy as np
import torch

from mmeff.testbed.data import BACKGROUND_CLASS, KINDS, SequenceBuilder, collate, patch_labels, training_turns
from mmeff.testbed.model import ShapesLlavaSpec, build_model, build_processor
from mmeff.testbed.world import ObjectSpec, SceneSpec, sample_scene


def test_patch_labels_mark_the_covered_patches():
    scene = SceneSpec((ObjectSpec("square", "red", 0.5, 0.5, 0.2, 0.0),), "plain", 0, image_size=96)
    labels = patch_labels(scene, 8)
    assert labels.shape == (12, 12)
    assert labels[6, 6] == KINDS.index(("red", "square"))
    assert labels[0, 0] == BACKGROUND_CLASS
    assert (labels != BACKGROUND_CLASS).sum() > 4


def test_training_sequences_match_the_inference_chat_template():
    spec = ShapesLlavaSpec()
    processor = build_processor(spec)
    model = build_model(spec, processor)
    builder = SequenceBuilder(processor.tokenizer, model.config.image_token_id, spec.image_tokens)
    turns = training_turns(sample_scene(3), random.Random(0))
    ids, labels = builder.build(turns)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0].question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    reference = processor(images=[np.zeros((96, 96, 3), np.uint8)], text=[text], return_tensors="pt")["input_ids"][0]
    assert ids[: len(reference)] == reference.tolist()
    assert processor.tokenizer.unk_token_id not in ids, "every testbed word is in the vocabulary"
    supervised = [t for t, lab in zip(ids, labels) if lab != -100]
    assert processor.tokenizer.decode(supervised).count("</s>") == len(turns)
    short_ids, short_labels = builder.build(turns[:1])
    batch = collate([(ids, labels), (short_ids, short_labels)], processor.tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert int(batch["attention_mask"][1].sum()) == len(short_ids) < len(ids)
    out = model(pixel_values=torch.zeros(2, 3, 96, 96), **batch)
    assert torch.isfinite(out.loss)


def test_training_turns_answer_truthfully_and_balance_existence():
    rng = random.Random(0)
    answers = []
    for seed in range(60):
        scene = sample_scene(seed)
        turns = training_turns(scene, rng, n_questions=8)
        assert 5 <= len(turns) <= 9 and sum(t.question == "describe the image." for t in turns) == 1
        for turn in turns:
            words = turn.question.rstrip("?").split()
            if words[:3] == ["is", "there", "a"]:
                kind = (words[3], words[4])
                assert turn.answer == ("yes" if kind in scene.kinds() else "no")
                answers.append(turn.answer)
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def test_hard_negatives_share_a_colour_or_shape_with_a_present_object():
    def shares(scene, hard):
        rng, out = random.Random(1), []
        for _ in range(40):
            for turn in training_turns(scene, rng, n_questions=8, hard_negatives=hard):
                words = turn.question.rstrip("?").split()
                if words[:3] == ["is", "there", "a"] and turn.answer == "no":
                    out.append(words[3] in {o.color for o in scene.objects} or words[4] in
                               {o.shape for o in scene.objects})
        return sum(out) / len(out)

    scene = SceneSpec((ObjectSpec("circle", "red", 0.3, 0.3, 0.1, 0), ObjectSpec("star", "blue", 0.7, 0.7, 0.1, 0)),
                      "plain", 0)
    assert shares(scene, 1.0) == 1.0  # only 18 of the 34 absent kinds share something
    assert shares(scene, 0.0) < 0.75


def test_colour_negatives_share_the_colour_but_not_the_shape():
    scene = SceneSpec((ObjectSpec("circle", "red", 0.3, 0.3, 0.1, 0), ObjectSpec("star", "blue", 0.7, 0.7, 0.1, 0)),
                      "plain", 0)
    rng, negatives = random.Random(2), []
    for _ in range(30):
        for turn in training_turns(scene, rng, n_questions=8, colour_negatives=1.0):
            words = turn.question.rstrip("?").split()
            if words[:3] == ["is", "there", "a"] and turn.answer == "no":
                negatives.append((words[3], words[4]))
    assert negatives and all(c in {"red", "blue"} and s not in {"circle", "star"} for c, s in negatives)


def test_isolated_turns_see_only_the_image_like_a_lone_question():
    """A turn packed after others gets exactly the logits it gets as the only question."""
    import torch

    from mmeff.testbed.data import SequenceBuilder, Turn, build_isolated, collate_isolated, images_tensor
    from mmeff.testbed.model import ShapesLlavaSpec, build_model, build_processor
    from mmeff.testbed.world import sample_scene

    spec = ShapesLlavaSpec()
    processor = build_processor(spec)
    model = build_model(spec, processor, seed=0).eval()
    builder = SequenceBuilder(processor.tokenizer, model.config.image_token_id, spec.image_tokens)
    scene = sample_scene(3, image_size=spec.image_size)
    pixels = images_tensor([scene], processor)
    first, second = Turn("how many objects are in the image?", "two"), Turn("what color is the star?", "red")
    packed = collate_isolated([build_isolated(builder, [first, second])], processor.tokenizer.pad_token_id)
    alone = collate_isolated([build_isolated(builder, [second])], processor.tokenizer.pad_token_id)
    assert alone["input_ids"].tolist() == [builder.build([second])[0]]  # one turn: the plain chat layout
    with torch.no_grad():
        logits = model(pixel_values=pixels, **{k: v for k, v in packed.items() if k != "labels"}).logits
        ref = model(pixel_values=pixels, **{k: v for k, v in alone.items() if k != "labels"}).logits
    n = alone["input_ids"].shape[1]
    tail = n - (spec.image_tokens + 3)  # the second turn's tokens
    torch.testing.assert_close(logits[0, -tail:], ref[0, -tail:], atol=1e-4, rtol=1e-4)
