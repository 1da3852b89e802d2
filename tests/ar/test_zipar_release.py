"""ZipAR against the released LlamaGen code (ThisisBillhe/ZipAR, ``LlamaGen-ZipAR/autoregressive/models/
generate_zipar.py``, commit 2a5695c): the schedule, the proxy token and what the cache exposes.

The release's rule is transcribed below as an independent reference (cells are ``(row, col)``); mmeff's
loop is observed only through what it feeds the model (codes, positions, attention visibility).
"""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.ar.sampling import SamplingConfig
from mmeff.ar.session import DecodeSession
from mmeff.ar.zipar import ZipARDecoder
from mmeff.errors import ConfigError
from mmeff.testing.ar import tiny_ar_image

Cell = tuple[int, int]
Fed = tuple[Cell, Cell]  # (cell whose token is fed, cell whose position it takes)
PROMPTS = ["red circle", "two blue squares left of star"]


def release_schedule(rows: int, cols: int, window: int) -> list[tuple[list[Fed], list[Cell]]]:
    """(fed, decoded) per forward, forward 0 being the prompt's, as ``generate_zipar.py`` runs them.

    Row 0 token by token (``generate``, :265-273); row 1 opens from the real ``(0, W-1)`` (:131, :154-162).
    Each forward then feeds, in row order, a row completed by the previous forward (its last token, output
    unused, :146-152, :183-187) and every open row's latest token (:154-162); every open row gains a token
    (:188-194). A row reaching ``window`` tokens opens the next (:199-206): the proxy appended is the latest
    token of the row above it (``row_token_num[:r]``, :201, :204), fed at the position of ``(r, W-1)``
    (:156-158). Valid for ``2 <= window < cols`` (outside it the release's bookkeeping breaks).
    """
    steps: list[tuple[list[Fed], list[Cell]]] = [([], [(0, 0)])]
    steps += [([((0, c - 1), (0, c - 1))], [(0, c)]) for c in range(1, cols)]
    made = [cols] + [0] * (rows - 1)
    open_rows, first_input, refeed = [1], {1: ((0, cols - 1), (0, cols - 1))}, None
    while open_rows:
        fed = [refeed] if refeed else []
        refeed = None
        fed += [first_input.pop(r, ((r, made[r] - 1), (r, made[r] - 1))) for r in open_rows]
        decoded = []
        for r in list(open_rows):
            decoded.append((r, made[r]))
            made[r] += 1
            if made[r] == window and r + 1 < rows:
                open_rows.append(r + 1)
                first_input[r + 1] = ((r - 1, made[r - 1] - 1), (r, cols - 1))
            if made[r] == cols:
                open_rows.remove(r)
                refeed = ((r, cols - 1), (r, cols - 1))
        steps.append((fed, decoded))
    return steps


def release_forwards(rows: int, cols: int, window: int) -> int:
    """Row 0: ``cols`` forwards (prefill + :271); row ``r >= 1`` starts ``window`` forwards after row
    ``r - 1`` and the last row takes ``cols``."""
    return cols + (rows - 2) * window + cols


class Recorder:
    """Wraps a session: per forward, the fed codes, their raster positions and each query's visible slots."""

    def __init__(self, session: DecodeSession) -> None:
        self.session, self.fed, self.visible = session, [], []
        forward, visibility = session.forward, session.visibility

        def record_forward(codes, positions, proxies=None):
            self.fed.append((codes.clone(), list(positions)))
            return forward(codes, positions, proxies)

        def record_visibility(positions, proxies):
            out = visibility(positions, proxies)
            self.visible.append((list(session.slot_pos), out[0, :, session.prefix_mask.shape[1]:].clone()))
            return out

        session.forward, session.visibility = record_forward, record_visibility


@pytest.fixture(scope="module")
def adapters():
    """Codebook 256 so that different cells rarely share a code: a wrong proxy shows."""
    return {g: mmeff.wrap(tiny_ar_image(grid=g, codebook=256)).adapter for g in (4, 8)}


@torch.no_grad()
def run(adapter, decoder: ZipARDecoder, seed: int = 0) -> tuple[torch.Tensor, Recorder]:
    session = DecodeSession(adapter, PROMPTS, 3.0)
    recorder = Recorder(session)
    codes = decoder.decode(session, SamplingConfig(3.0), torch.Generator().manual_seed(seed))
    return codes, recorder


def cell(pos: int, cols: int) -> Cell:
    return divmod(pos, cols)


CASES = [(4, 2), (4, 3), (8, 2), (8, 3), (8, 5), (8, 7)]


@pytest.mark.parametrize("grid,window", CASES)
def test_each_forward_feeds_what_the_release_feeds(adapters, grid, window):
    """Same forwards, same (position, token) pairs in each: the schedule and every proxy token."""
    codes, rec = run(adapters[grid], ZipARDecoder(window))
    reference = release_schedule(grid, grid, window)
    assert len(rec.fed) == len(reference) - 1  # the prompt's forward is not a session.forward call
    for (fed_codes, positions), (ref_fed, _) in zip(rec.fed, reference[1:]):
        ours = sorted((cell(p, grid), tuple(fed_codes[:, j].tolist())) for j, p in enumerate(positions))
        theirs = sorted((at, tuple(codes[:, src[0] * grid + src[1]].tolist())) for src, at in ref_fed)
        assert ours == theirs


@pytest.mark.parametrize("grid,window", CASES)
def test_cells_decoded_per_forward_follow_the_release(adapters, grid, window):
    """A token is fed in the forward after the one that decoded it; a position fed twice held a proxy first."""
    codes, rec = run(adapters[grid], ZipARDecoder(window))
    last_feed = {}
    for k, (_, positions) in enumerate(rec.fed, start=1):
        for p in positions:
            last_feed[cell(p, grid)] = k
    decoded = [[] for _ in range(len(rec.fed) + 1)]
    for c, k in last_feed.items():
        decoded[k - 1].append(c)
    decoded[-1] += [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in last_feed]
    assert [sorted(d) for d in decoded] == [sorted(d) for _, d in release_schedule(grid, grid, window)]


@pytest.mark.parametrize("grid,window", CASES)
def test_queries_see_what_the_releases_static_cache_holds(adapters, grid, window):
    """Static cache: a query at position p reads every position <= p, a later write replacing the proxy.
    Positions never written are masked (the release reads them as zeros: a documented difference)."""
    _, rec = run(adapters[grid], ZipARDecoder(window))
    for slot_pos, visible in rec.visible:
        occupant = {p: s for s, p in enumerate(slot_pos)}  # last write wins
        first = len(slot_pos) - visible.shape[0]
        for j in range(visible.shape[0]):
            query = slot_pos[first + j]
            expected = [occupant[p] == s and p <= query for s, p in enumerate(slot_pos)]
            assert visible[j].tolist() == expected


@pytest.mark.parametrize("grid,window", CASES + [(4, 4), (4, 9), (8, 8)])
def test_forward_count_is_the_releases(adapters, grid, window):
    decoder = ZipARDecoder(window)
    codes, rec = run(adapters[grid], decoder)
    expected = release_forwards(grid, grid, min(window, grid))  # window >= cols: raster, grid * grid
    assert len(rec.fed) + 1 == expected and decoder.stats.forwards == expected - 1
    assert decoder.stats.proxies == (grid - 2 if window < grid else 0)
    assert codes.shape == (len(PROMPTS), grid * grid)


def test_earlier_variant_stays_available(adapters):
    """Row 1 opened by a window of row 0, row r's own latest token as proxy, seen by its own query only."""
    grid, window = 8, 3
    decoder = ZipARDecoder(window, full_first_row=False, proxy="own_row", proxy_visible=False)
    codes, rec = run(adapters[grid], decoder)
    assert len(rec.fed) + 1 == (grid - 1) * window + grid and decoder.stats.proxies == grid - 1
    first_fed, positions = rec.fed[window - 1]
    assert positions[-1] == grid - 1 and torch.equal(first_fed[:, -1], codes[:, window - 1])
    proxy_slot = rec.visible[window - 1][0].index(grid - 1)
    assert not any(v[:, proxy_slot].any() for _, v in rec.visible[window:])


@pytest.mark.parametrize("options,match", [({"proxy": "left"}, "proxy"), ({"full_first_row": 1}, "full_first_row"),
                                           ({"proxy_visible": "yes"}, "proxy_visible")])
def test_bad_options_are_refused(options, match):
    pipe = mmeff.wrap(tiny_ar_image())
    with pytest.raises(ConfigError, match=match):
        pipe.add_plugin("zipar", **options)


def test_plugin_defaults_are_the_releases():
    pipe = mmeff.wrap(tiny_ar_image())
    pipe.add_plugin("zipar")
    config = pipe.plugins["zipar"].config
    assert (config.window, config.full_first_row, config.proxy, config.proxy_visible) == (8, True, "row_above", True)
