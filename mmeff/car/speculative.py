"""Continuous speculative decoding (Wang et al., 2024) with a smaller draft model of the same family.

Each round the draft proposes ``draft_len`` tokens (its own backbone forward and head sampling
per token); one target forward then gives the target's hidden state at every drafted position,
and the target head is run along the *same* trajectory (same starting and per-step noise).
A draft token ``x`` (its head's last-step mean: no noise enters the clean token) is accepted
with probability ``min(1, r)``, the released ``spec_decode_runner`` ratio
(``DistributionProcessor.judge_accept``):

    r = N(x; mu_t, (tau sigma_t)^2) / N(x; mu_d, (tau sigma_d)^2)      (last step, std inflated by tau)
        * prod over earlier steps and the c dimensions of sigma_t / sigma_d

with normalised c-dimensional densities, so the last step's std ratio enters as (sigma_d / sigma_t)^c
and each earlier step's as (sigma_t / sigma_d)^c (``tau`` = ``inner_temperature``, 42 as released).
The first rejected token is resampled from ``max(0, p - q / fixed)`` by acceptance-rejection, at most
``max_tries`` times. By default (``resample="last_step"``, as released) ``p`` and ``q`` are the target's
and the draft's last-step Gaussians at that position, with their own (not inflated) stds, ``fixed``
the earlier steps' product above, and proposals are drawn from ``p``: no head runs. ``resample="head"``
(mmeff's earlier rule) proposes target-head samples from fresh noise and keeps one with probability
``max(0, 1 - 1/r)``, ``r`` evaluated with the draft head run along the proposal's trajectory.
Unlike the released code, the drafts after a rejection are discarded (they were conditioned on the
rejected token) and a failed resampling falls back to its last proposal (a sample of ``p``) instead
of a zero vector. The first ``prefill_ratio`` of the tokens come from the target alone (token
pre-filling).

Random streams: head noise (draft, and target proposals when resampling) comes from the call's
generator in the same order as plain decoding; acceptance uniforms from a second generator
seeded from its state at the call's start. So a draft identical to the target accepts everything and
reproduces plain decoding up to float error (about 6e-5 on the testbed).
"""

from __future__ import annotations

import hashlib
import math

import torch

from .loop import ContinuousSession, ContinuousStats, HeadSettings, head_sample
from .ops import acceptance_log_ratio, last_step_residual, log_std_product_ratio, residual_by_rejection
from .sampler import HeadTrajectory, draw_noise, sample_head

RESAMPLE_MODES = ("last_step", "head")


def log_ratio(x: torch.Tensor, target: HeadTrajectory, draft: HeadTrajectory, tau: float) -> torch.Tensor:
    """log r per row for tokens ``x`` (B, c) drawn along the draft's trajectory (see the module docstring)."""
    log_fixed = log_std_product_ratio(target.stds[:-1], draft.stds[:-1], x)
    return acceptance_log_ratio(x, target.means[-1], target.stds[-1], draft.means[-1], draft.stds[-1], log_fixed,
                                tau)


def resample_from_last_step(target: HeadTrajectory, draft: HeadTrajectory, max_tries: int,
                            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The released resampling of rejected tokens: ``norm(max(0, p - q / fixed))`` with ``p``, ``q`` the
    target's and the draft's last-step Gaussians (stds not inflated), proposals from ``p``. Returns the
    tokens, which rows succeeded, and the proposals drawn per row."""
    log_fixed = log_std_product_ratio(target.stds[:-1], draft.stds[:-1], target.means[-1])
    return last_step_residual(target.means[-1], target.stds[-1], draft.means[-1], draft.stds[-1], log_fixed,
                              max_tries, generator)


def select_rows(traj: HeadTrajectory, rows: torch.Tensor) -> HeadTrajectory:
    """The trajectory of some rows only (a batched head run split back into its parts)."""
    return HeadTrajectory(traj.sample[rows], [m[rows] for m in traj.means], [sd[rows] for sd in traj.stds])


def guidance_halves(z: torch.Tensor, batch: int, settings: HeadSettings) -> tuple[torch.Tensor, ...]:
    """Conditioning rows as ``sample_head`` lays them out: (cond, uncond) with guidance, else (all,)."""
    return (z[:batch], z[batch:]) if settings.guidance_scale is not None else (z,)


def acceptance_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The acceptance uniforms' own stream, seeded from the call generator's *current state*: the same seed
    gives the same stream, and a generator reused across calls gives each call fresh uniforms (seeding from
    ``initial_seed()`` would repeat them) without drawing from it (plain decoding's head noise stays in order)."""
    g = torch.Generator(device=device)
    if generator is None:
        return g.manual_seed(int(torch.randint(0, 2**62, ())))
    digest = hashlib.blake2b(generator.get_state().cpu().numpy().tobytes(), digest_size=8).digest()
    return g.manual_seed(int.from_bytes(digest, "little") % 2**63)


class SpeculativeDecoder:
    def __init__(self, draft_adapter, draft_len: int = 8, prefill_ratio: float = 0.15, tau: float = 42.0,
                 max_tries: int = 100, resample: str = "last_step") -> None:
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {list(RESAMPLE_MODES)}, got {resample!r}")
        self.draft_adapter, self.draft_len, self.prefill_ratio = draft_adapter, draft_len, prefill_ratio
        self.tau, self.max_tries, self.resample = tau, max_tries, resample

    def decode(self, session: ContinuousSession, settings: HeadSettings, generator: torch.Generator | None,
               stats: ContinuousStats) -> torch.Tensor:
        target = session.adapter
        n, b, c = target.num_image_tokens, session.batch, target.token_dim
        device = session.first_logits.device
        draft_session = ContinuousSession(self.draft_adapter, session.prompts, session.guidance_scale)
        accept_gen = acceptance_generator(generator, device)
        tokens = torch.zeros(b, n, c, device=device)
        prefill = min(n, math.ceil(self.prefill_ratio * n))
        i, draft_fed = 0, 0
        while i < n:
            if i < prefill:  # the target alone
                z = session.first_logits if i == 0 else session.forward(tokens[:, i - 1 : i], [i - 1])[:, -1]
                traj, _, _ = head_sample(target, z, settings, i, b, generator)
                tokens[:, i] = traj.sample
                self._count(stats, traj, i)
                i += 1
                continue
            k = min(self.draft_len, n - i)
            drafts, noises, draft_trajs = self._draft(draft_session, tokens, i, draft_fed, k, settings, generator,
                                                      stats)
            z_t = self._target_hidden(session, tokens, drafts, i, k)  # (rows, k, d)
            accepted, c_round = self._verify(target, z_t, drafts, noises, draft_trajs, settings, i, accept_gen,
                                             generator, stats)
            tokens[:, i : i + c_round] = self._row_tokens(drafts, accepted, c_round)[:, :c_round]
            session.rollback(k - c_round)
            draft_session.rollback(k - c_round)
            draft_fed = i + c_round - 1
            i += c_round
        stats.draft_forwards += draft_session.forwards
        return tokens

    # -- one round ---------------------------------------------------------------------
    def _draft(self, draft_session, tokens, i, draft_fed, k, settings, generator, stats):
        """k draft tokens; the draft first catches up on committed tokens it has not seen (one forward)."""
        if i == 0:
            z = draft_session.first_logits
        else:
            z = draft_session.forward(tokens[:, draft_fed:i], list(range(draft_fed, i)))[:, -1]
        drafts, noises, trajs, hidden = [], [], [], []
        for j in range(k):
            traj, start, per_step = head_sample(self.draft_adapter, z, settings, i + j, tokens.shape[0], generator)
            drafts.append(traj.sample)
            noises.append((start, per_step))
            trajs.append(traj)
            hidden.append(z)
            stats.draft_head_steps += len(traj.means)
            if j + 1 < k:
                z = draft_session.forward(traj.sample[:, None], [i + j])[:, -1]
        stats.drafted += k * tokens.shape[0]
        self._draft_hidden = torch.stack(hidden, 1)  # (rows, k, d): the draft's condition at each position
        return torch.stack(drafts, 1), noises, trajs

    @staticmethod
    def _target_hidden(session, tokens, drafts, i, k) -> torch.Tensor:
        """Target hidden states for positions i .. i+k-1 from one forward (the last committed token + drafts)."""
        feed = drafts[:, : k - 1] if i == 0 else torch.cat([tokens[:, i - 1 : i], drafts[:, : k - 1]], 1)
        if feed.shape[1] == 0:
            return session.first_logits[:, None]
        out = session.forward(feed, list(range(i - 1 if i > 0 else 0, i + k - 1)))
        return torch.cat([session.first_logits[:, None], out], 1) if i == 0 else out

    def _verify(self, target, z_t, drafts, noises, draft_trajs, settings, i, accept_gen, generator, stats):
        """Leading accepted drafts per row and the tokens the batch commits (its rows' minimum: a row that
        rejects commits its accepted drafts and one resampled token); the resampled tokens go to ``_resampled``."""
        b, k = drafts.shape[:2]
        trajs = self._target_trajectories(target, z_t, noises, settings, i)
        ok = torch.zeros(b, k, dtype=torch.bool, device=drafts.device)
        for j in range(k):
            stats.head_steps += len(trajs[j].means)
            u = torch.rand(b, generator=accept_gen, device=drafts.device)
            ok[:, j] = u.log() < log_ratio(drafts[:, j], trajs[j], draft_trajs[j], self.tau).clamp(max=0)
        accepted = ok.long().cumprod(-1).sum(-1)
        stats.accepted += int(accepted.sum())
        c_round = int(torch.where(accepted < k, accepted + 1, accepted).min())
        self._trajs = (trajs, draft_trajs)  # per position: the target's and the draft's along the draft's noise
        self._resampled = self._resample(target, z_t, accepted, c_round, settings, i, generator, stats)
        return accepted, c_round

    @staticmethod
    def _target_trajectories(target, z_t, noises, settings, i) -> list[HeadTrajectory]:
        """The target head along each draft's trajectory, the k positions as one batch per step count.

        The head is small and sequential in its steps, so k separate calls cost k times one batched
        call; DiSA gives positions different step counts, so positions are grouped by them."""
        b, k = len(noises[0][0]), z_t.shape[1]
        halves = guidance_halves(z_t, b, settings)
        groups: dict[int, list[int]] = {}
        for j in range(k):
            groups.setdefault(settings.steps_at(i + j), []).append(j)
        out: list[HeadTrajectory | None] = [None] * k
        for steps, js in groups.items():
            z = torch.cat([h[:, js].transpose(0, 1).reshape(-1, h.shape[-1]) for h in halves])
            start = torch.cat([noises[j][0] for j in js])
            per_step = torch.cat([noises[j][1] for j in js], 1)
            traj = sample_head(target.head, target.scheduler, z, steps, settings.guidance_scale, start, per_step,
                               settings.temperature)
            for n, j in enumerate(js):
                rows = slice(n * b, (n + 1) * b)
                out[j] = select_rows(traj, rows)
        return out

    def _resample(self, target, z_t, accepted, c_round, settings, i, generator, stats) -> torch.Tensor:
        """A token from the residual at each row's first rejected position, by acceptance-rejection (the
        module docstring's two rules: ``last_step`` or ``head``). The batch commits ``c_round`` tokens (its
        rows' minimum), so rows rejecting at or after that position are not resampled."""
        b = accepted.shape[0]
        out = torch.zeros(b, target.token_dim, device=z_t.device)
        for pos in sorted({int(a) for a in accepted if int(a) < c_round}):
            rows = (accepted == pos).nonzero().flatten()
            if self.resample == "last_step":
                out[rows] = self._resample_last_step(pos, rows, generator, stats)
            else:
                out[rows] = self._resample_rows(target, z_t[:, pos], self._draft_hidden[:, pos], rows, b,
                                                settings.steps_at(i + pos), settings, generator, stats)
        return out

    def _resample_last_step(self, pos: int, rows: torch.Tensor, generator: torch.Generator | None,
                            stats: ContinuousStats) -> torch.Tensor:
        """The released rule at position ``pos``, from the Gaussians verification already computed."""
        trajs, draft_trajs = self._trajs
        out, done, tries = resample_from_last_step(select_rows(trajs[pos], rows), select_rows(draft_trajs[pos], rows),
                                                   self.max_tries, generator)
        stats.resampled += len(rows)
        stats.resample_proposals += tries * len(rows)
        stats.resample_failures += int((~done).sum())
        return out

    #: acceptance-rejection proposals drawn per head run, run after run (the last size repeats). A proposal
    #: x ~ p is kept with probability max(0, 1 - q(x)/p(x)), high where p and q are far apart (as when drafts
    #: are mostly rejected), so the first proposal or two usually suffice; where the heads are close few are
    #: kept, and one batched run of many is far cheaper than many runs of one.
    RUN_SIZES = (2, 16)

    def _resample_rows(self, target, z_t, z_d, rows, b, steps, settings, generator, stats) -> torch.Tensor:
        m = len(rows)
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        left = self.max_tries
        runs = 0

        def repeat(z: torch.Tensor, n: int) -> torch.Tensor:  # candidate-major, cond rows before uncond
            return torch.cat([h[rows].repeat(n, 1) for h in guidance_halves(z, b, settings)])

        def run(n: int) -> None:
            start, per_step = draw_noise(n * m, target.token_dim, steps, generator, z_t.device)
            p = sample_head(target.head, target.scheduler, repeat(z_t, n), steps, settings.guidance_scale, start,
                            per_step, settings.temperature)
            q = sample_head(self.draft_adapter.head, self.draft_adapter.scheduler, repeat(z_d, n), steps,
                            settings.guidance_scale, start, per_step, settings.temperature)
            stats.head_steps += n * steps
            stats.draft_head_steps += n * steps
            stats.resample_proposals += n * m
            log_q_over_p = -log_ratio(p.sample, p, q, self.tau)
            pending.extend(zip(p.sample.view(n, m, -1), log_q_over_p.view(n, m)))

        def propose() -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal left, runs
            if not pending:
                n = min(self.RUN_SIZES[min(runs, len(self.RUN_SIZES) - 1)], left)
                left -= n
                runs += 1
                run(n)
            return pending.pop(0)

        out, done = residual_by_rejection(propose, m, self.max_tries, generator)
        stats.resampled += m
        stats.resample_failures += int((~done).sum())
        return out

    def _row_tokens(self, drafts, accepted, c_round: int) -> torch.Tensor:
        b = drafts.shape[0]
        out = drafts.clone()
        rows = torch.arange(b, device=drafts.device)
        rejected = accepted < c_round  # resampled; later rejections lie past what the batch commits
        out[rows[rejected], accepted[rejected]] = self._resampled[rejected]
        return out

    @staticmethod
    def _count(stats: ContinuousStats, traj: HeadTrajectory, i: int) -> None:
        stats.head_steps += len(traj.means)
