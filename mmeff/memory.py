"""Peak memory of a block of work, on the GPU or on the CPU.

On CUDA it is PyTorch's own count (``max_memory_allocated`` after a reset, which also resets
the caller's own peak counters). The CPU has no such counter that can be reset, and most of
our users' runs are on the CPU, so there (on Linux) a background thread reads the process's
resident set size from ``/proc`` every 2 ms while the block runs (a read takes about 20 µs
here, so about 1% of one core): the peak covers everything the process holds (the models included), and ``added_mb``
says how far it rose above where the block started. Elsewhere the OS only tells the
process's lifetime peak, reported as such.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

_STATM = Path("/proc/self/statm")
CUDA, SAMPLED, LIFETIME = "cuda allocated", "process RSS", "process peak RSS (lifetime)"


@dataclass
class PeakMemory:
    kind: str = ""  # CUDA, SAMPLED, LIFETIME or "unavailable"
    mb: float = 0.0  # the peak while the block ran
    added_mb: float = 0.0  # the peak minus the amount at the block's start


def resident_mb() -> float | None:
    """The process's resident set size now (Linux), else None."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        return None


def lifetime_peak_mb() -> float | None:
    """The process's peak resident set size since it started (Unix), else None (Windows)."""
    try:
        import resource
    except ImportError:
        return None
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
            out.kind, out.mb, out.added_mb = CUDA, peak / 2**20, (peak - start) / 2**20
        return
    start = resident_mb()
    if start is None:  # no /proc: the lifetime peak, which cannot say what the block added
        before = lifetime_peak_mb()
        try:
            yield out
        finally:
            after = lifetime_peak_mb()
            if after is None or before is None:
                out.kind = "unavailable"
            else:
                out.kind, out.mb, out.added_mb = LIFETIME, after, after - before
        return
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], resident_mb() or 0.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        done.set()
        sampler.join()
        top = max(peak[0], resident_mb() or 0.0)
        out.kind, out.mb, out.added_mb = SAMPLED, top, top - start
