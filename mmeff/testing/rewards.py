"""Offline helpers for tiny reward models: a BERT tokenizer and an untrained shapes-clip folder."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import BertTokenizer

from .tokenizer import BASE_WORDS

BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROMPT_WORDS = ("cube", "sphere", "cone", "ring", "photo", "painting", "with", "beside", "dog", "cat")


def bert_tokenizer(extra_words: tuple[str, ...] = ()) -> BertTokenizer:
    """A real (fast) ``BertTokenizer`` over a small lower-case word-piece vocabulary; ``[PAD]`` is id 0 as in BERT."""
    words = [w.lower() for w in (*BASE_WORDS, *PROMPT_WORDS, *extra_words) if w.strip() and "\n" not in w]
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces = [*letters, *(f"##{c}" for c in letters)]
    tokens = list(dict.fromkeys([*BERT_SPECIAL, *words, *pieces]))
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def write_tiny_shapes_clip(out_dir: Path, seed: int = 0) -> Path:
    """An untrained shapes-clip in the layout ``ClipTrainer.export`` writes (open_clip ``local-dir`` folder)."""
    from safetensors.torch import save_file

    from ..testbed.train_clip import MEAN, STD, build

    model, tokenizer, cfg = build(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "open_clip_model.safetensors")
    tokenizer.save_pretrained(out_dir)
    config = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                                   "resize_mode": "shortest"}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out_dir
