"""Offline helpers for tiny reward models: a BERT tokenizer and an untrained shapes-clip folder."""

from __future__ import annotations

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
    from ..testbed.train_clip import build, save_clip

    model, tokenizer, cfg = build(seed)
    return save_clip(model, tokenizer, cfg, out_dir)
