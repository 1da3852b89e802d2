"""Speculative Jacobi decoding (SJD, Teng et al. 2024) over a ``DecodeSession``, with LANTERN's relaxation.

Each forward feeds the last committed token and a window of drafts. The output at every
draft position is the model's distribution there *given the drafts before it*; drafts are
then verified left to right with the speculative criterion ``u < p(d) / q(d)``, the first
rejected position is resampled from ``norm(max(0, p - q))`` and, when every draft passes,
the last output gives a bonus token. So each forward commits 1 to ``window`` tokens and the
output distribution is the model's own. Unaccepted fresh samples become the next drafts
(their ``p`` is their ``q``); new positions get initial drafts with a one-hot ``q`` (exact
for any draft, however it was chosen).

Batches: rows accept different numbers of tokens, but the KV cache is rectangular, so every
row commits the batch minimum; a row's further accepted tokens stay as *fixed* drafts that
the next forward re-feeds and keeps without a test (they are already exact samples).

Random stream, per forward: initial drafts (``randint``), then one uniform per verified
draft (``rand``), then the committed token of every row (one ``multinomial`` over the
batch), then fresh samples for refilling (one ``multinomial``). With ``window=1`` only the
third draw remains, which is exactly plain decoding's stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .ops import accept_probability, lantern_release_residual, relaxed_probability, residual
from .sampling import SamplingConfig
from .session import DecodeSession

INITS = ("random", "repeat_left", "repeat_above")
REJECTIONS = ("release", "borrowed")  # LANTERN after a rejection: released code / only the lenders' mass out


@dataclass
class JacobiStats:
    forwards: int = 0
    drafts_verified: int = 0
    drafts_accepted: int = 0
    committed_per_forward: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | int]:
        return {"jacobi_forwards": self.forwards, "drafts_verified": self.drafts_verified,
                "drafts_accepted": self.drafts_accepted,
                "acceptance_rate": self.drafts_accepted / max(1, self.drafts_verified),
                "mean_committed_per_forward": sum(self.committed_per_forward) / max(1, self.forwards),
                "max_committed_per_forward": max(self.committed_per_forward, default=0)}


@dataclass
class Relaxation:
    """LANTERN: accept against ``p~`` (mass of the ``k`` nearest codes up to ``delta``) instead of ``p``.

    ``rejection`` picks what a rejected draft x is resampled from: ``"release"`` zeroes ``p`` at x's
    ``k + 1`` nearest codes before the residual (so build ``neighbours`` with ``k + 1`` columns);
    ``"borrowed"`` zeroes only the codes whose mass x borrowed and renormalises.
    """

    neighbours: torch.Tensor  # (K, >= k) codes by latent distance, self excluded
    delta: float
    k: int | None = None  # columns lent from; None: all of them
    rejection: str = "release"

    @property
    def lenders(self) -> torch.Tensor:
        """The (K, k) codes whose mass a draft may borrow."""
        return self.neighbours if self.k is None else self.neighbours[:, : self.k]

    @property
    def active(self) -> bool:
        return self.delta > 0 and self.lenders.shape[-1] > 0

    def rejected_distribution(self, p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
        """(B, K) resampling distribution at a rejected draft (B,) under ``p`` and its draft distribution ``q``."""
        if self.rejection == "borrowed":
            return residual(_without_borrowed(p, draft, self), q)
        nearest = self.neighbours[:, : self.lenders.shape[-1] + 1].to(draft.device)[draft]
        return lantern_release_residual(p, q, nearest, self.delta)


def neighbour_table(code_vectors: torch.Tensor, k: int) -> torch.Tensor:
    """``(K, k)`` nearest codes of every code by L2 distance in the VQ latent space (itself excluded)."""
    k = min(k, code_vectors.shape[0] - 1)
    dist = torch.cdist(code_vectors.float(), code_vectors.float())
    dist.fill_diagonal_(float("inf"))
    return dist.argsort(-1)[:, :k]


class JacobiDecoder:
    def __init__(self, window: int, init: str = "random", active: tuple[int, int | None] = (0, None),
                 relaxation: Relaxation | None = None) -> None:
        self.window, self.init, self.active, self.relaxation = window, init, active, relaxation
        self.stats = JacobiStats()

    def _window_at(self, i: int, n: int) -> int:
        lo, hi = self.active
        inside = i >= lo and (hi is None or i < hi)
        return min(self.window if inside else 1, n - i)

    def _initial(self, codes: torch.Tensor, positions: list[int], cols: int, k: int,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Initial drafts for ``positions`` (B, m): random codes, or copies of the left / upper neighbour."""
        b = codes.shape[0]
        fresh = torch.randint(0, k, (b, len(positions)), generator=generator, device=codes.device)
        if self.init == "random":
            return fresh
        out = fresh.clone()
        for j, pos in enumerate(positions):
            src = pos - (1 if self.init == "repeat_left" else cols)
            if src >= 0:
                out[:, j] = out[:, j - (pos - src)] if pos - src <= j else codes[:, src]
        return out

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        """Returns (B, N) codes. Invariant: the cache holds every committed token but the last."""
        adapter = session.adapter
        n, k, cols = adapter.num_image_tokens, adapter.codebook_size, adapter.grid[1]
        b, device = session.batch, session.first_logits.device
        codes = torch.zeros(b, n, dtype=torch.long, device=device)
        d_tok = torch.zeros(b, 0, dtype=torch.long, device=device)  # drafts for positions i, i+1, ...
        d_q = torch.zeros(b, 0, k, device=device)  # the distribution each draft was drawn from
        d_fixed = torch.zeros(b, 0, dtype=torch.bool, device=device)  # already exact: kept without a test
        i = 0
        while i < n:
            drafts = self._window_at(i, n) - 1  # verified at positions i .. i+drafts-1; bonus at i+drafts
            if d_tok.shape[1] < drafts:
                positions = list(range(i + d_tok.shape[1], i + drafts))
                new = self._initial(torch.cat([codes[:, :i], d_tok], 1), positions, cols, k, generator)
                d_tok = torch.cat([d_tok, new], 1)
                d_q = torch.cat([d_q, torch.nn.functional.one_hot(new, k).to(d_q.dtype)], 1)
                d_fixed = torch.cat([d_fixed, torch.zeros_like(new, dtype=torch.bool)], 1)
            d_tok, d_q, d_fixed = d_tok[:, :drafts], d_q[:, :drafts], d_fixed[:, :drafts]
            p = sampling.probs(self._window_logits(session, codes, d_tok, i))  # (B, drafts+1, K)
            accepted = self._verify(p, d_tok, d_q, d_fixed, generator)
            last = sampling.draw(self._final_distribution(p, d_tok, d_q, accepted), generator)
            row_tokens = torch.cat([d_tok, d_tok.new_zeros(b, 1)], 1)
            row_tokens[torch.arange(b, device=device), accepted] = last
            per_row = accepted + 1
            c = int(per_row.min())
            codes[:, i : i + c] = row_tokens[:, :c]
            self.stats.committed_per_forward.append(c)
            session.rollback(drafts + 1 - c)  # keep slots up to position i+c-2
            d_tok, d_q, d_fixed = self._refill(p, row_tokens, per_row, c, sampling, generator)
            i += c
        return codes

    def _window_logits(self, session: DecodeSession, codes: torch.Tensor, d_tok: torch.Tensor, i: int
                       ) -> torch.Tensor:
        """Logits (rows, drafts+1, K) for positions i .. i+drafts, from one forward (none at i = 0 without drafts)."""
        if i == 0:
            if d_tok.shape[1] == 0:
                return session.first_logits[:, None]
            self.stats.forwards += 1
            out = session.forward(d_tok, list(range(d_tok.shape[1])))
            return torch.cat([session.first_logits[:, None], out], 1)
        self.stats.forwards += 1
        return session.forward(torch.cat([codes[:, i - 1 : i], d_tok], 1), list(range(i - 1, i + d_tok.shape[1])))

    def _verify(self, p: torch.Tensor, d_tok: torch.Tensor, d_q: torch.Tensor, d_fixed: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
        """Leading accepted drafts per row (B,): ``u < p(d) / q(d)`` left to right, fixed drafts always pass."""
        b, drafts = d_tok.shape
        if drafts == 0:
            return torch.zeros(b, dtype=torch.long, device=d_tok.device)
        u = torch.rand(b, drafts, generator=generator, device=d_tok.device)
        target = self._target_probability(p[:, :drafts], d_tok)
        ok = d_fixed | (u < accept_probability(target, d_q.gather(-1, d_tok[..., None]).squeeze(-1)))
        accepted = ok.long().cumprod(-1).sum(-1)
        self.stats.drafts_verified += int((~d_fixed).sum())
        self.stats.drafts_accepted += int(((ok.long().cumprod(-1) > 0) & ~d_fixed).sum())
        return accepted

    def _target_probability(self, p: torch.Tensor, d_tok: torch.Tensor) -> torch.Tensor:
        if self.relaxation is None:
            return p.gather(-1, d_tok[..., None]).squeeze(-1)
        return relaxed_probability(p, d_tok, self.relaxation.lenders.to(d_tok.device), self.relaxation.delta)

    def _final_distribution(self, p: torch.Tensor, d_tok: torch.Tensor, d_q: torch.Tensor, accepted: torch.Tensor
                            ) -> torch.Tensor:
        """Per row: the residual at the first rejected draft, or the bonus position's p when all passed."""
        b, drafts = d_tok.shape
        rows = torch.arange(b, device=p.device)
        p_at = p[rows, accepted]
        if drafts == 0:
            return p_at
        at = accepted.clamp(max=drafts - 1)
        q_at, d_at = d_q[rows, at], d_tok[rows, at]
        relax = self.relaxation
        if relax is not None and relax.active:  # LANTERN: the rejected draft's neighbourhood is out too
            rejected = relax.rejected_distribution(p_at, q_at, d_at)
        else:
            rejected = residual(p_at, q_at)
        return torch.where((accepted < drafts)[:, None], rejected, p[rows, accepted])

    def _refill(self, p: torch.Tensor, row_tokens: torch.Tensor, per_row: torch.Tensor, c: int,
                sampling: SamplingConfig, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drafts for positions i+c ..: a row's own extra committed tokens (fixed), then fresh samples."""
        width = p.shape[1] - c
        b, device = p.shape[0], p.device
        if width == 0:
            return (torch.zeros(b, 0, dtype=torch.long, device=device), p.new_zeros(b, 0, p.shape[-1]),
                    torch.zeros(b, 0, dtype=torch.bool, device=device))
        q = p[:, c:]
        fresh = sampling.draw(q, generator)
        index = torch.arange(c, c + width, device=device)[None]
        fixed = index < per_row[:, None]
        tokens = torch.where(fixed, row_tokens[:, c:], fresh)
        return tokens, q, fixed


def _without_borrowed(p: torch.Tensor, draft: torch.Tensor, relax: Relaxation) -> torch.Tensor:
    """Zero the neighbours whose mass LANTERN lent the rejected draft, renormalised (the residual removes the draft)."""
    near = relax.lenders.to(draft.device)[draft]  # (B, k)
    mass = p.gather(-1, near)
    used = mass.cumsum(-1) <= relax.delta
    out = p.scatter(-1, near, torch.where(used, torch.zeros_like(mass), mass))
    total = out.sum(-1, keepdim=True)
    return torch.where(total > 1e-12, out / total.clamp_min(1e-20), p)
