"""Pure tensor math for dropping tokens inside a decoder: re-layout, positions, masks.

A *layout* is, per batch row, the list of original sequence indices still present,
left padded with invalid slots so that rows of different lengths stack.
"""

from __future__ import annotations

import torch


def left_pad_indices(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``True`` entries of each row of ``keep`` (B, L), left padded.

    Returns ``(idx, valid)`` of shape (B, L') with ``L' = keep.sum(-1).max()``; padded
    slots point at index 0 and have ``valid == False``. Order within a row is preserved.
    """
    counts = keep.sum(-1)
    width = int(counts.max()) if keep.numel() else 0
    length = keep.shape[-1]
    # stable sort puts kept positions last, in their original order
    order = torch.sort(keep.to(torch.int8), dim=-1, stable=True).indices
    idx = order[:, length - width :] if width else order[:, :0]
    slot = torch.arange(width, device=keep.device).expand(keep.shape[0], -1)
    valid = slot >= (width - counts).unsqueeze(-1)
    return torch.where(valid, idx, torch.zeros_like(idx)), valid


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, j]]`` for (B, L, ...) tensors."""
    index = idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, index)


def compact_positions(
    positions: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids after removing tokens, closing the gaps (PyramidDrop's convention).

    ``positions`` (B, L) are the original ids, ``present`` (B, L) marks tokens that were
    valid before the drop. Returns new ids for the layout ``idx`` and, per row, how many
    tokens were removed (decode positions shift back by that much).
    """
    kept = torch.zeros_like(present)
    kept.scatter_(1, idx, valid)
    removed = present & ~kept
    before = removed.long().cumsum(-1) - removed.long()
    new = positions.gather(1, idx) - before.gather(1, idx)
    return torch.where(valid, new, torch.zeros_like(new)), removed.sum(-1)


def causal_mask(
    key_valid: torch.Tensor, q_len: int, *, as_bool: bool, dtype: torch.dtype
) -> torch.Tensor:
    """A (B, 1, q_len, K) attention mask: queries are the last ``q_len`` keys, causal, padding masked.

    ``as_bool`` gives sdpa's boolean convention (True = attend); otherwise the additive
    float convention of eager attention (0 / dtype min).
    """
    k_len = key_valid.shape[-1]
    k_index = torch.arange(k_len, device=key_valid.device).expand_as(key_valid)
    return layout_mask(k_index[:, k_len - q_len :], k_index, key_valid, as_bool=as_bool, dtype=dtype)


def layout_mask(
    q_index: torch.Tensor, k_index: torch.Tensor, key_valid: torch.Tensor, *, as_bool: bool, dtype: torch.dtype,
    window: int | None = None, q_block: torch.Tensor | None = None, k_block: torch.Tensor | None = None,
) -> torch.Tensor:
    """A (B, 1, Q, K) mask over tokens named by their index in the full sequence (``q_index`` (B, Q),
    ``k_index`` (B, K); a query index of -1 sees nothing).

    Key k is visible to query q if it is valid and comes no later (``k <= q``) or both lie in
    the same image block (``q_block == k_block >= 0``: Gemma 3's bidirectional image attention),
    and, with a ``window``, if ``k > q - window``: transformers' rules, applied to original
    indices, so a layer that lost tokens still sees exactly the survivors of its unmodified
    window.
    """
    q, k = q_index[:, :, None], k_index[:, None, :]
    allowed = k <= q
    if q_block is not None and k_block is not None:
        qb = q_block[:, :, None]
        allowed = allowed | ((qb == k_block[:, None, :]) & (qb >= 0))
    if window is not None:
        allowed = allowed & (k > q - window)
    allowed = (allowed & key_valid[:, None, :] & (q >= 0))[:, None]
    if as_bool:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=key_valid.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def image_blocks(token_type_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) block id of each image token (one per contiguous run of ``token_type_ids == 1``), -1 elsewhere:
    the groups in which transformers' Gemma 3 lets image tokens attend to each other both ways."""
    image = token_type_ids == 1
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    return torch.where(image, starts.long().cumsum(-1) - 1, -1)


def slots_of(
    idx: torch.Tensor, valid: torch.Tensor, sub_idx: torch.Tensor, sub_valid: torch.Tensor, full_len: int
) -> torch.Tensor:
    """For each slot of a sub-layout ``(sub_idx, sub_valid)``, the slot of ``(idx, valid)`` holding
    the same original token (padded slots give 0). Gathers a cache down to a later layout."""
    batch, width = idx.shape
    inverse = torch.zeros(batch, full_len + 1, dtype=torch.long, device=idx.device)
    slots = torch.arange(width, device=idx.device).expand(batch, -1)
    inverse.scatter_(1, torch.where(valid, idx, full_len), slots)
    return torch.where(sub_valid, inverse.gather(1, sub_idx), torch.zeros_like(sub_idx))
