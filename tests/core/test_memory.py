"""Peak memory of a block on the CPU: sampled resident memory, which must see a short-lived allocation."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import pytest

from mmeff.memory import peak_memory, resident_mb


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="sampling needs Linux's /proc")
def test_a_short_lived_allocation_shows_in_the_peak_and_is_gone_after():
    with peak_memory("cpu") as idle:
        time.sleep(0.05)
    with peak_memory("cpu") as busy:
        # 256 MB of fresh pages, touched, held for a moment, then unmapped (a tensor could reuse heap pages
        # that earlier tests freed but malloc kept resident, and show no rise)
        block = mmap.mmap(-1, 256 * 2**20)
        block.write(b"\x01" * len(block))
        time.sleep(0.3)  # long enough for the sampler thread to be scheduled on a busy machine
        block.close()
    assert busy.kind == idle.kind == "process RSS"
    assert busy.added_mb > 200 and busy.mb >= busy.added_mb
    assert idle.added_mb < 50
    assert resident_mb() < busy.mb  # freed: the peak was a peak, not where the process stayed


def test_without_proc_the_lifetime_peak_is_reported_as_such(monkeypatch):
    import mmeff.memory as memory

    monkeypatch.setattr(memory, "resident_mb", lambda: None)
    with peak_memory("cpu") as mem:
        pass
    assert mem.kind == memory.LIFETIME and mem.mb > 50  # the process has been at least this large
