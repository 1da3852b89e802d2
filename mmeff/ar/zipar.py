"""ZipAR (He et al. 2024): next-set decoding, several rows of the image grid in flight per forward.

Schedule of the released LlamaGen code (``generate_zipar.py``), the default here: row 0 is
decoded alone, token by token; its real last token then opens row 1. From then on every forward
advances every open row by one token, and row ``r + 1`` opens as soon as row ``r`` holds
``window`` tokens. Its first token needs ``(r, W - 1)``, which does not exist yet, so a *proxy*
is fed at that position: the latest token of row ``r - 1`` (``(r - 1, W - 1)`` once that row is
complete). Rows below see the proxy until row ``r`` completes and its real last token takes the
position (the release overwrites the proxy's static-cache slot; here the proxy slot is retired).

Not the release: slots of tokens not generated yet are masked (the release's position mask lets
queries read their zero-filled static-cache slots); ``window >= columns`` is raster decoding
token for token (the release turns the proxy into a code there). ``full_first_row=False``,
``proxy="own_row"`` and ``proxy_visible=False`` restore mmeff's earlier variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sampling import SamplingConfig
from .session import DecodeSession

PROXIES = ("row_above", "own_row")


@dataclass
class ZipARStats:
    forwards: int = 0
    proxies: int = 0
    max_rows_in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"zipar_forwards": self.forwards, "proxies": self.proxies, "max_rows_in_flight": self.max_rows_in_flight}


class _Grid:
    """Codes decoded so far, row by row (each row fills left to right)."""

    def __init__(self, rows: int, cols: int, batch: int, device: torch.device) -> None:
        self.rows, self.cols = rows, cols
        self.codes = torch.zeros(batch, rows * cols, dtype=torch.long, device=device)
        self.made = [0] * rows
        self.opened = {0}

    def put(self, row: int, tokens: torch.Tensor) -> None:
        self.codes[:, row * self.cols + self.made[row]] = tokens
        self.made[row] += 1

    def latest(self, row: int) -> tuple[torch.Tensor, int]:
        """The newest token of ``row`` and its raster position."""
        pos = row * self.cols + self.made[row] - 1
        return self.codes[:, pos], pos

    def complete(self, row: int) -> bool:
        return self.made[row] == self.cols

    @property
    def done(self) -> bool:
        return all(m == self.cols for m in self.made)


@dataclass
class _Feed:
    """One forward's inputs; ``targets[j]`` is the row whose next token output ``j`` predicts (None: unused)."""

    codes: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    hidden: list[bool] = field(default_factory=list)  # the session's "proxy" flag: seen by nothing but itself
    targets: list[int | None] = field(default_factory=list)
    proxies: dict[int, int] = field(default_factory=dict)  # row r -> index of the proxy standing in for (r, W - 1)

    def add(self, code: torch.Tensor, position: int, hidden: bool, target: int | None) -> None:
        self.codes.append(code)
        self.positions.append(position)
        self.hidden.append(hidden)
        self.targets.append(target)


class ZipARDecoder:
    """``window``: tokens of row ``r`` that open row ``r + 1``. The other options select the release's
    behaviour (defaults) or mmeff's earlier variant; see the module docstring."""

    def __init__(self, window: int, full_first_row: bool = True, proxy: str = "row_above",
                 proxy_visible: bool = True) -> None:
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {list(PROXIES)}, got {proxy!r}")
        self.window = window
        self.full_first_row = full_first_row
        self.proxy = proxy
        self.proxy_visible = proxy_visible
        self.stats = ZipARStats()

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        rows, cols = session.adapter.grid
        grid = _Grid(rows, cols, session.batch, session.first_logits.device)
        proxy_slots: dict[int, int] = {}  # row r -> cache slot of the proxy standing in for (r, W - 1)
        pending = {0: session.first_logits}  # row -> logits (session rows, K) for its next position
        while True:
            order = sorted(pending)
            self.stats.max_rows_in_flight = max(self.stats.max_rows_in_flight, len(order))
            tokens = sampling.draw(sampling.probs(torch.stack([pending[r] for r in order], 1)), generator)
            for j, r in enumerate(order):
                grid.put(r, tokens[:, j])
            if grid.done:
                return grid.codes
            feed = self._plan(grid, order)
            self._retire_replaced_proxies(session, grid, proxy_slots)
            proxy_slots.update({r: len(session.slot_pos) + j for r, j in feed.proxies.items()})
            logits = session.forward(torch.stack(feed.codes, 1), feed.positions, feed.hidden)
            self.stats.forwards += 1
            pending = {t: logits[:, j] for j, t in enumerate(feed.targets) if t is not None}

    def _plan(self, grid: _Grid, order: list[int]) -> _Feed:
        """Feed every row's new token (its output predicts the row's next one, or opens the next row
        when the row is complete), then a proxy for the row a window has just opened."""
        feed = _Feed()
        for r in order:
            code, pos = grid.latest(r)
            feed.add(code, pos, False, self._real_target(grid, r))
        for r in order:
            if self._opens_by_proxy(grid, r):
                grid.opened.add(r + 1)
                feed.proxies[r] = len(feed.codes)
                feed.add(self._proxy_token(grid, r), r * grid.cols + grid.cols - 1, not self.proxy_visible, r + 1)
                self.stats.proxies += 1
        return feed

    @staticmethod
    def _real_target(grid: _Grid, r: int) -> int | None:
        if not grid.complete(r):
            return r
        if r + 1 < grid.rows and r + 1 not in grid.opened:  # row below still closed: open it from the real token
            grid.opened.add(r + 1)
            return r + 1
        return None  # fed only to replace the proxy (or to complete the cache)

    def _opens_by_proxy(self, grid: _Grid, r: int) -> bool:
        if r + 1 >= grid.rows or r + 1 in grid.opened or (r == 0 and self.full_first_row):
            return False
        return self.window <= grid.made[r] < grid.cols

    def _proxy_token(self, grid: _Grid, r: int) -> torch.Tensor:
        """Stand-in for (r, W - 1): the release's latest token of the row above (row 0 has none above)."""
        source = r - 1 if self.proxy == "row_above" and r > 0 else r
        return grid.latest(source)[0]

    @staticmethod
    def _retire_replaced_proxies(session: DecodeSession, grid: _Grid, proxy_slots: dict[int, int]) -> None:
        """A row just completed: its real last token is fed now, so its proxy leaves every query's view
        from this forward on (the release overwrites the slot in place). Flagged as a session proxy,
        a slot is seen by nothing but its own query."""
        for r in [r for r in proxy_slots if grid.complete(r)]:
            session.hide_slot(proxy_slots.pop(r))
