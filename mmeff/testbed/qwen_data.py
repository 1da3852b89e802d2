"""Training sequences for the shapes Qwen2-VL: Qwen's chat layout, isolated turns, M-RoPE positions.

The same packing as the LLaVA recipe (:func:`mmeff.testbed.data.build_isolated`): one image,
then every question as a turn that sees the image and itself only. What Qwen changes is the
text around the image and the positions: image tokens carry (t, h, w) ids from the model's own
``get_rope_index``, and text after the image continues from the image's largest id + 1, so each
turn starts where a lone question starts at evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from ..testing.qwen import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START
from .data import Turn, patch_labels
from .world import SceneSpec


class QwenSequenceBuilder:
    """Token ids + answer-only labels in exactly the layout Qwen's chat template gives at inference."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.eos = tokenizer.convert_tokens_to_ids(IM_END)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prefix(self, image_tokens: int) -> list[int]:
        return self._ids(f"{IM_START}user\n{VISION_START}{IMAGE_PAD * image_tokens}{VISION_END}")

    def turn(self, turn: Turn) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids): the question closes the user turn and opens the assistant's."""
        return self._ids(f"{turn.question}{IM_END}\n{IM_START}assistant\n"), self._ids(turn.answer) + [self.eos]

    def build_isolated(self, turns: list[Turn], image_tokens: int) -> tuple[list[int], list[int], list[int], list[int]]:
        """ids, labels, 1-D positions and segments, as :func:`mmeff.testbed.data.build_isolated` returns them."""
        ids = self.prefix(image_tokens)
        start = len(ids)
        labels, positions, segments = [-100] * start, list(range(start)), [0] * start
        for i, turn in enumerate(turns, start=1):
            prompt, answer = self.turn(turn)
            ids += prompt + answer
            labels += [-100] * len(prompt) + answer
            positions += range(start, start + len(prompt) + len(answer))
            segments += [i] * (len(prompt) + len(answer))
        return ids, labels, positions, segments


def mrope_positions(model, input_ids: torch.Tensor, flat_positions: torch.Tensor, prefix_lengths: list[int],
                    image_grid_thw: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(3, B, L) ids for a :func:`collate_isolated` batch: the model's own ids on each row's prefix, the
    1-D positions shifted by its ``rope_deltas`` on the turns (text ids are equal on all three axes)."""
    device = input_ids.device
    lengths = torch.tensor(prefix_lengths, device=device)
    prefix = torch.arange(input_ids.shape[1], device=device)[None] < lengths[:, None]
    types = (input_ids == image_token_id).int()
    positions, deltas = model.model.get_rope_index(input_ids, types, image_grid_thw=image_grid_thw,
                                                   attention_mask=prefix)
    shifted = (flat_positions + deltas.to(flat_positions.device)).expand(3, -1, -1)
    return torch.where(prefix[None], positions.to(device), shifted)


def merged_labels(scenes: list[SceneSpec], token_pixels: int) -> torch.Tensor:
    """Per image token (a merged block of patches, row-major as the merger emits them) the kind covering it."""
    return torch.from_numpy(np.concatenate([patch_labels(s, token_pixels).reshape(-1) for s in scenes]))
