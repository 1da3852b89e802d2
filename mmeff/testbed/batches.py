"""Training batches that are pure functions of the step, rendered ahead by DataLoader workers when asked.

Every testbed recipe draws batch ``step`` from ``fn(step, *args)``, so a run is the same
whether the batches come from the training loop or from worker processes (a GPU needs the
workers: rendering, not the model, is then the bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


class StepBatches(torch.utils.data.Dataset):
    def __init__(self, fn: Callable[..., Any], start: int, stop: int, *args: Any) -> None:
        self.fn, self.start, self.stop, self.args = fn, start, stop, args

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> Any:
        return self.fn(self.start + i, *self.args)


def step_batches(fn: Callable[..., Any], start: int, stop: int, *args: Any, workers: int = 0) -> Iterator[Any]:
    """``fn(step, *args)`` for ``step`` in ``start..stop``, in order."""
    data = StepBatches(fn, start, stop, *args)
    if workers <= 0 or len(data) == 0:
        return (data[i] for i in range(len(data)))
    return iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4))
