"""ToMe for Stable Diffusion's tensor math (Bolya & Hoffman, 2023): a 2-D bipartite merge and its inverse.

Destination tokens are one per ``sy x sx`` cell of the token grid (the cell's first token, or a
random one per cell); every other token is a source. The ``r`` sources most cosine-similar to
some destination are averaged into it (``merge``); ``unmerge`` gives every merged source its
destination's value back, so a block's output has the full token count again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def destination_mask(h: int, w: int, sx: int, sy: int, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """(h*w,) bool: True at each full ``sy x sx`` cell's destination, row-major over the grid.

    ``offsets`` (cells_y, cells_x) picks the destination inside each cell (index ``dy*sx + dx``);
    None picks the top-left token. Rows and columns past the last full cell hold sources only.
    """
    cells_y, cells_x = h // sy, w // sx
    pick = torch.zeros(cells_y, cells_x, dtype=torch.long) if offsets is None else offsets.long().cpu()
    cell = torch.zeros(cells_y, cells_x, sy * sx, dtype=torch.bool)
    cell.scatter_(-1, pick[..., None], True)
    grid = torch.zeros(h, w, dtype=torch.bool)
    grid[: cells_y * sy, : cells_x * sx] = cell.view(cells_y, cells_x, sy, sx).transpose(1, 2).reshape(
        cells_y * sy, cells_x * sx)
    return grid.flatten()


@dataclass
class GridMerge:
    """Indices of one merge, shared by every tensor merged the same way (attention, MLP, ...)."""

    dst: torch.Tensor  # (D,) token positions of the destinations
    unmerged: torch.Tensor  # (B, S - r) token positions of the sources kept as they are
    merged: torch.Tensor  # (B, r) token positions of the sources merged away
    into: torch.Tensor  # (B, r) the destination (0..D-1) each merged source joins
    n: int

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N - r, C): kept sources, then destinations holding their merged sources' mean."""
        b, _, c = x.shape
        dst = x[:, self.dst].scatter_reduce(
            1, self.into[..., None].expand(b, -1, c), _take(x, self.merged), reduce="mean")
        return torch.cat([_take(x, self.unmerged), dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C) -> (B, N, C): each merged source gets its destination's value."""
        b, _, c = y.shape
        kept, dst = y[:, : self.unmerged.shape[1]], y[:, self.unmerged.shape[1]:]
        out = y.new_zeros(b, self.n, c)
        out[:, self.dst] = dst
        out.scatter_(1, self.unmerged[..., None].expand(-1, -1, c), kept)
        out.scatter_(1, self.merged[..., None].expand(-1, -1, c), _take(dst, self.into))
        return out


def grid_merge(metric: torch.Tensor, dst_mask: torch.Tensor, r: int) -> GridMerge:
    """Choose ``r`` sources to merge by cosine similarity of ``metric`` (B, N, C) to the destinations."""
    with torch.no_grad():
        n = metric.shape[1]
        dst = dst_mask.nonzero().squeeze(-1).to(metric.device)
        src = (~dst_mask).nonzero().squeeze(-1).to(metric.device)
        r = min(r, src.numel())
        unit = metric / metric.norm(dim=-1, keepdim=True)
        best, into = (unit[:, src] @ unit[:, dst].transpose(1, 2)).max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        merged_rank, kept_rank = order[:, :r], order[:, r:]
        return GridMerge(dst=dst, unmerged=src[kept_rank], merged=src[merged_rank],
                         into=into.gather(1, merged_rank), n=n)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
