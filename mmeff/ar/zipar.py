"""ZipAR (He et al. 2024): next-set decoding, several rows of the image grid in flight per forward.

Row ``r + 1`` opens as soon as row ``r`` holds ``window`` tokens; from then on every forward
advances every open row by one token. A row is opened by feeding a *proxy*, the latest
token of the row above placed at that row's last position (what LlamaGen's released code
does); the proxy's cache slot is masked from every later query (the released code leaves
unwritten slots visible; ``DecodeSession`` exposes exactly the generated tokens). With
``window >= columns`` no proxy is ever needed and decoding is raster order, token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import SamplingConfig
from .session import DecodeSession


@dataclass
class ZipARStats:
    forwards: int = 0
    proxies: int = 0
    max_rows_in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"zipar_forwards": self.forwards, "proxies": self.proxies, "max_rows_in_flight": self.max_rows_in_flight}


class ZipARDecoder:
    def __init__(self, window: int) -> None:
        self.window = window
        self.stats = ZipARStats()

    def decode(self, session: DecodeSession, sampling: SamplingConfig, generator: torch.Generator | None
               ) -> torch.Tensor:
        rows, cols = session.adapter.grid
        b = session.batch
        codes = torch.zeros(b, rows * cols, dtype=torch.long, device=session.first_logits.device)
        made = [0] * rows  # tokens generated per row
        opened = {0}
        pending = {0: session.first_logits}  # row -> logits (session rows, K) for its next position
        while True:
            order = sorted(pending)
            self.stats.max_rows_in_flight = max(self.stats.max_rows_in_flight, len(order))
            tokens = sampling.draw(sampling.probs(torch.stack([pending[r] for r in order], 1)), generator)
            for j, r in enumerate(order):
                codes[:, r * cols + made[r]] = tokens[:, j]
                made[r] += 1
            if all(m == cols for m in made):
                return codes
            feed, positions, proxies, targets = [], [], [], []
            for r in order:  # feed every new token; its output predicts the next one of its row (or the next row)
                feed.append(codes[:, r * cols + made[r] - 1])
                positions.append(r * cols + made[r] - 1)
                proxies.append(False)
                if made[r] < cols:
                    targets.append(r)
                elif r + 1 < rows and r + 1 not in opened:
                    opened.add(r + 1)
                    targets.append(r + 1)
                else:
                    targets.append(None)
            for r in order:  # open the row below through a proxy once the window is ready
                if r + 1 < rows and r + 1 not in opened and self.window <= made[r] < cols:
                    opened.add(r + 1)
                    feed.append(codes[:, r * cols + made[r] - 1])
                    positions.append(r * cols + cols - 1)
                    proxies.append(True)
                    targets.append(r + 1)
                    self.stats.proxies += 1
            logits = session.forward(torch.stack(feed, 1), positions, proxies)
            self.stats.forwards += 1
            pending = {t: logits[:, j] for j, t in enumerate(targets) if t is not None}
