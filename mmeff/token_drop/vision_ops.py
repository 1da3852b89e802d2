"""Pure tensor math for reducing tokens inside a ViT (CLIP, Qwen-VL): attention rows, token merging.

Token state inside the tower is ``(x, sizes, sources)``: hidden states (B, L, D), how many
original patches each token stands for (0 marks a dead padding slot of a ragged batch), and
the grid index of the patch a token is written back to (-1 for CLS, which stays at slot 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def size_bias(sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ToMe's proportional attention as an additive mask (B, 1, 1, L): log(size); dead slots -inf."""
    bias = sizes.to(torch.float32).log()
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)[:, None, None, :]


def split_heads(x: torch.Tensor, proj: nn.Module, num_heads: int) -> torch.Tensor:
    batch, length, _ = x.shape
    return proj(x).view(batch, length, num_heads, -1).transpose(1, 2)  # (B, H, L, hd)


def cls_attention(
    x_norm: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, num_heads: int, sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """The CLS token's softmax attention over every token, summed over heads: (B, L).

    One query row recomputed from the layer's projections (the tower may run under sdpa).
    """
    q = split_heads(x_norm[:, :1], q_proj, num_heads)
    k = split_heads(x_norm, k_proj, num_heads)
    logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])  # (B, H, L)
    if sizes is not None:
        logits = logits + sizes.float().log()[:, None, :]
    return logits.softmax(-1).sum(1)


def head_mean_keys(x_norm: torch.Tensor, k_proj: nn.Module, num_heads: int) -> torch.Tensor:
    """Keys averaged over heads (B, L, head_dim): the similarity metric of ToMe and VisionZip."""
    return split_heads(x_norm, k_proj, num_heads).mean(1)


@dataclass
class BipartiteMatch:
    """One round of ToMe's bipartite soft matching: which A tokens (even slots) join which B tokens (odd)."""

    src: torch.Tensor  # (B, r) A positions merged away
    dst: torch.Tensor  # (B, r) the B position each joins
    kept: torch.Tensor  # (B, |A| - r) A positions kept, in order

    def merge(self, x: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Size-weighted means: (B, N, C), (B, N) -> kept A tokens then every B token, and their sizes."""
        w = sizes.to(x.dtype)[..., None]
        xa, xb, wa, wb = (x * w)[:, ::2], (x * w)[:, 1::2], w[:, ::2], w[:, 1::2]
        dim = x.shape[-1]
        xb = xb.scatter_add(1, self.dst[..., None].expand(-1, -1, dim),
                            xa.gather(1, self.src[..., None].expand(-1, -1, dim)))
        wb = wb.scatter_add(1, self.dst[..., None], wa.gather(1, self.src[..., None]))
        new_w = torch.cat([wa.gather(1, self.kept[..., None]), wb], 1)
        new_x = torch.cat([xa.gather(1, self.kept[..., None].expand(-1, -1, dim)), xb], 1) / new_w.clamp(min=1e-6)
        return new_x, new_w[..., 0].to(sizes.dtype)

    def unmerge(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """(B, N - r, C) -> (B, n, C): every token gets the value of the token it became."""
        b, _, dim = y.shape
        kept, yb = y[:, : self.kept.shape[1]], y[:, self.kept.shape[1]:]
        ya = y.new_empty(b, (n + 1) // 2, dim)
        ya.scatter_(1, self.kept[..., None].expand(-1, -1, dim), kept)
        ya.scatter_(1, self.src[..., None].expand(-1, -1, dim), yb.gather(1, self.dst[..., None].expand(-1, -1, dim)))
        out = y.new_empty(b, n, dim)
        out[:, ::2], out[:, 1::2] = ya, yb
        return out


def bipartite_match(keys: torch.Tensor, r: int, protect_first: bool = True) -> BipartiteMatch | None:
    """Each A token's best B partner by key cosine; the ``r`` best-matched A tokens merge (None: nothing to do).

    ``protect_first`` keeps slot 0 (a CLS token) out of the merge, as ToMe's ``class_token``.
    """
    a_keys, b_keys = keys[:, ::2], keys[:, 1::2]
    r = min(r, a_keys.shape[1] - int(protect_first))
    if r <= 0:
        return None
    a_n, b_n = F.normalize(a_keys.float(), dim=-1), F.normalize(b_keys.float(), dim=-1)
    scores = a_n @ b_n.transpose(-1, -2)
    if protect_first:
        scores[:, 0, :] = -math.inf  # CLS never merges
    best, match = scores.max(-1)
    order = best.argsort(-1, descending=True)
    src = order[:, :r]
    return BipartiteMatch(src=src, dst=match.gather(1, src), kept=order[:, r:].sort(-1).values)


def bipartite_merge(
    x: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor, sources: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of ToMe's bipartite soft matching: merge ``r`` tokens per row, CLS (slot 0) protected.

    Alternate tokens go to sets A (even slots) and B (odd); each A token's best match in B by
    key cosine; the ``r`` best-matched A tokens are merged into their B partner by a
    size-weighted mean. Survivors keep their relative order within A, then B follow.
    """
    match = bipartite_match(keys, r)
    if match is None:
        return x, sizes, sources
    new_x, new_sizes = match.merge(x, sizes)
    new_sources = torch.cat([sources[:, ::2].gather(1, match.kept), sources[:, 1::2]], 1)
    return new_x, new_sizes, new_sources


def window_similarity(x: torch.Tensor, grid: int, window: int = 3) -> torch.Tensor:
    """Mean off-diagonal cosine similarity inside each ``window``×``window`` block of the patch grid.

    ``x`` (B, grid², D) patches in raster order (no CLS). Returns (B, W) for the
    ``(grid // window)²`` complete windows, in raster order of windows.
    """
    batch, _, dim = x.shape
    n = grid // window
    blocks = x[:, : grid * grid].view(batch, grid, grid, dim)[:, : n * window, : n * window]
    blocks = blocks.reshape(batch, n, window, n, window, dim).permute(0, 1, 3, 2, 4, 5)
    blocks = F.normalize(blocks.reshape(batch, n * n, window * window, dim).float(), dim=-1)
    sim = blocks @ blocks.transpose(-1, -2)
    k = window * window
    return (sim.sum((-1, -2)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)) / (k * (k - 1))


def window_members(grid: int, window: int = 3) -> torch.Tensor:
    """Patch indices of each complete window (W, window²), raster order; the last one is the bottom-right."""
    n = grid // window
    rows = torch.arange(n)[:, None, None, None] * window + torch.arange(window)[None, None, :, None]
    cols = torch.arange(n)[None, :, None, None] * window + torch.arange(window)[None, None, None, :]
    return (rows * grid + cols).reshape(n * n, window * window)


def local_window_merge(
    x: torch.Tensor, sizes: torch.Tensor, grid: int, threshold: float, window: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """MustDrop's local spatial merge on (B, 1 + grid², D) tokens with CLS first and patches in raster order.

    Every window whose mean pairwise cosine is at least ``threshold`` is merged, size-weighted,
    into its last (bottom-right) token; the other members become dead (size 0). Returns new
    ``(x, sizes)`` of the same length; compact with :func:`compact_alive`.
    """
    patches = x[:, 1:]
    sim = window_similarity(patches, grid, window)  # (B, W)
    members = window_members(grid, window).to(x.device)  # (W, k)
    merge = sim >= threshold
    w = sizes[:, 1:].to(x.dtype)
    member_x = patches[:, members] * w[:, members][..., None]  # (B, W, k, D)
    member_w = w[:, members]
    merged = member_x.sum(2) / member_w.sum(2)[..., None].clamp(min=1e-6)
    last = members[:, -1]
    new_patches, new_w = patches.clone(), w.clone()
    sel = merge[..., None]  # (B, W, 1)
    new_patches[:, last] = torch.where(sel, merged, patches[:, last])
    new_w[:, last] = torch.where(merge, member_w.sum(2), w[:, last])
    dead = torch.zeros_like(w, dtype=torch.bool)
    dead[:, members[:, :-1].reshape(-1)] = merge.repeat_interleave(members.shape[1] - 1, dim=1)
    new_w = new_w.masked_fill(dead, 0)
    out_x = torch.cat([x[:, :1], new_patches], 1)
    out_sizes = torch.cat([sizes[:, :1], new_w.to(sizes.dtype)], 1)
    return out_x, out_sizes


def compact_alive(
    x: torch.Tensor, sizes: torch.Tensor, sources: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move live tokens (size > 0) to the front in their order, cut to the longest row; dead slots pad."""
    alive = sizes > 0
    order = torch.sort((~alive).to(torch.int8), dim=1, stable=True).indices
    width = int(alive.sum(1).max())
    order = order[:, :width]
    x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
    return x, sizes.gather(1, order), sources.gather(1, order)


def visionzip_merge(
    x: torch.Tensor, cls_attn: torch.Tensor, keys: torch.Tensor, sources: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on (B, 1 + N, D) tokens: CLS + ``dominant`` patches by CLS attention + ``contextual``
    tokens, each a uniformly strided target plus the mean of the remaining patches most similar to it.

    Returns ``(x, sources)`` with 1 + dominant + contextual tokens; a contextual token is written
    back at its target's grid position.
    """
    patches, idx = zip_tokens(x[:, 1:], cls_attn[:, 1:], keys[:, 1:], dominant, contextual)
    return torch.cat([x[:, :1], patches], 1), torch.cat([sources[:, :1], sources[:, 1:].gather(1, idx)], 1)


def zip_tokens(
    x: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's selection on (B, N, D) tokens without a CLS: the ``dominant`` highest-scoring tokens
    (in token order), then ``contextual`` tokens, each a target taken at a uniform stride among the
    others plus the mean of the remaining ones whose key is most cosine-similar to the target's.

    Returns the (B, dominant + contextual, D) tokens and the index of the token each one stands at
    (a contextual token at its target's).
    """
    batch, n, dim = x.shape
    dominant = min(dominant, n)
    top = scores.topk(dominant, dim=-1).indices.sort(-1).values
    is_dom = torch.zeros(batch, n, dtype=torch.bool, device=x.device)
    is_dom.scatter_(1, top, True)
    out_x = x.gather(1, top[..., None].expand(-1, -1, dim))
    rest = n - dominant
    contextual = min(contextual, rest)
    if contextual <= 0:
        return out_x, top
    rest_idx = torch.sort(is_dom.to(torch.int8), dim=1, stable=True).indices[:, :rest]  # non-dominant, in order
    step = max(1, rest // contextual)
    target_pos = torch.arange(0, rest, step, device=x.device)[:contextual]
    is_target = torch.zeros(rest, dtype=torch.bool, device=x.device)
    is_target[target_pos] = True
    target_idx, other_idx = rest_idx[:, target_pos], rest_idx[:, ~is_target]
    k = F.normalize(keys.float(), dim=-1)
    k_t = k.gather(1, target_idx[..., None].expand(-1, -1, k.shape[-1]))
    k_o = k.gather(1, other_idx[..., None].expand(-1, -1, k.shape[-1]))
    assign = (k_o @ k_t.transpose(-1, -2)).argmax(-1)  # (B, n_other)
    one_hot = F.one_hot(assign, contextual).to(x.dtype)  # (B, n_other, C)
    x_o = x.gather(1, other_idx[..., None].expand(-1, -1, dim))
    mean = (one_hot.transpose(1, 2) @ x_o) / one_hot.sum(1)[..., None].clamp(min=1)
    ctx = x.gather(1, target_idx[..., None].expand(-1, -1, dim)) + mean
    return torch.cat([out_x, ctx], 1), torch.cat([top, target_idx], 1)


def received_attention(
    q: torch.Tensor, k: torch.Tensor, bounds: list[int], scaling: float, chunk: int = 128
) -> torch.Tensor:
    """Attention each token *receives* (S,): within each segment ``bounds[i]:bounds[i + 1]`` (the
    tower's attention blocks, e.g. ``cu_seqlens``), softmax(q k^T * scaling) averaged over heads and
    summed over the query rows. The ranking signal VisionZip's Qwen2.5-VL release uses in place of
    CLS attention; ``q`` and ``k`` are (H, S, d), rotary applied. One head and ``chunk`` query rows
    at a time, so a 5k-token image never holds an S x S matrix (128 rows of fp32 scores stay in cache:
    4x faster than 512 on this CPU for a 5184-patch image)."""
    heads, length, _ = q.shape
    q = (q.float() * scaling).contiguous()
    k = k.float().contiguous()
    out = torch.zeros(length, dtype=torch.float32, device=q.device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        for h in range(heads):
            keys_t = k[h, start:end].T.contiguous()
            for row in range(start, end, chunk):
                out[start:end] += (q[h, row : min(end, row + chunk)] @ keys_t).softmax(-1).sum(0)
    return out / heads


def received_by_crop(x_norm: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, num_heads: int,
                     scaling: float) -> torch.Tensor:
    """:func:`received_attention` for a batch of crops that each attend only to themselves (SigLIP
    tiles, frames): ``x_norm`` (C, L, D) is the layer's normed input; returns (C, L)."""
    crops, length, _ = x_norm.shape

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # (C, H, L, d) -> (H, C * L, d)
        return t.transpose(0, 1).reshape(num_heads, crops * length, -1)

    q = heads_first(split_heads(x_norm, q_proj, num_heads))
    k = heads_first(split_heads(x_norm, k_proj, num_heads))
    return received_attention(q, k, list(range(0, crops * length + 1, length)), scaling).view(crops, length)


def fill_first_free_slot(grid: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Write ``token`` (B, D) into each row's first all-zero slot of ``grid`` (B, n, D), where a row has one:
    VisionZip's CLS token reaches the LLM at the earliest slot the kept patches leave free."""
    free = (grid == 0).all(-1)
    has_free = free.any(-1)
    slot = free.to(torch.int8).argmax(-1)
    out = grid.clone()
    rows = has_free.nonzero().flatten()
    out[rows, slot[rows]] = token[rows].to(grid.dtype)
    return out


def scatter_to_grid(features: torch.Tensor, sources: torch.Tensor, alive: torch.Tensor, n: int) -> torch.Tensor:
    """Write reduced features (B, M, D) back to their grid slots in a (B, n, D) tensor of zeros.

    The zero rows tell the decoder-side engine which image tokens to drop before layer 0; this
    keeps the placeholder count transformers checks and LLaVA-NeXT's tile packing intact.
    """
    batch, _, dim = features.shape
    target = torch.where(alive & (sources >= 0), sources, n)
    out = features.new_zeros(batch, n + 1, dim)
    out.scatter_(1, target[..., None].expand(-1, -1, dim), features)
    return out[:, :n]
