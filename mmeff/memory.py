"""Peak memory of a block of work, on the GPU or on the CPU.

On CUDA it is PyTorch's own count (``max_memory_allocated`` after a reset). The CPU has no
such counter that can be reset, and most of our users' runs are on the CPU, so there a
background thread samples the process's resident set size every few milliseconds while the
block runs: the peak covers everything the process holds (the models included), and
``added_mb`` says how far it rose above where the block started.
"""

from __future__ import annotations

import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

_STATM = Path("/proc/self/statm")
_PAGE = resource.getpagesize()


@dataclass
class PeakMemory:
    kind: str = ""  # "cuda allocated" or "process RSS"
    mb: float = 0.0  # the peak while the block ran
    added_mb: float = 0.0  # the peak minus the amount at the block's start


def resident_mb() -> float:
    """The process's resident set size now (Linux); elsewhere its peak so far, the best the OS tells."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


@contextmanager
def peak_memory(device: torch.device | str, interval_s: float = 0.002) -> Iterator[PeakMemory]:
    """``with peak_memory(device) as mem: ...`` then read ``mem.mb`` / ``mem.added_mb``."""
    device = torch.device(device)
    out = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield out
        finally:
            peak = torch.cuda.max_memory_allocated(device)
            out.kind, out.mb, out.added_mb = "cuda allocated", peak / 2**20, (peak - start) / 2**20
        return
    start = resident_mb()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], resident_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        top = max(peak[0], resident_mb())
        out.kind, out.mb, out.added_mb = "process RSS", top, top - start
