"""SJD, LANTERN and ZipAR on a tiny random ar_image model: exactness, effect, composition, errors."""

import pytest
import torch

import mmeff
from mmeff.ar.jacobi import JacobiDecoder, Relaxation, neighbour_table
from mmeff.ar.loop import plain_decode
from mmeff.ar.sampling import SamplingConfig
from mmeff.ar.session import DecodeSession
from mmeff.ar.zipar import ZipARDecoder
from mmeff.errors import ConfigError, UnsupportedModelError
from mmeff.testing.ar import tiny_ar_image

PROMPTS = ["red circle", "two blue squares left of star", "green star"]
SAMPLINGS = [SamplingConfig(3.0), SamplingConfig(None, top_k=6), SamplingConfig(2.0, temperature=0.7, top_p=0.9)]


@pytest.fixture(scope="module")
def adapter():
    return mmeff.wrap(tiny_ar_image()).adapter


@torch.no_grad()
def run(adapter, decode, sampling, seed=0, prompts=PROMPTS):
    session = DecodeSession(adapter, prompts, sampling.guidance_scale)
    generator = torch.Generator().manual_seed(seed)
    codes = decode(session, sampling, generator) if decode else plain_decode(session, sampling, generator)
    return codes, session.forwards, generator.get_state()


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_window_one_is_plain_sampling_with_the_same_random_stream(adapter, sampling):
    plain, forwards, state = run(adapter, None, sampling)
    sjd, sjd_forwards, sjd_state = run(adapter, JacobiDecoder(1).decode, sampling)
    assert torch.equal(plain, sjd) and forwards == sjd_forwards and torch.equal(state, sjd_state)


@pytest.mark.parametrize("window", [2, 4, 16])
@pytest.mark.parametrize("init", ["random", "repeat_left", "repeat_above"])
def test_greedy_sjd_equals_greedy_decoding(adapter, window, init):
    greedy = SamplingConfig(3.0, temperature=0)
    plain, forwards, _ = run(adapter, None, greedy)
    decoder = JacobiDecoder(window, init, (1, None))
    codes, sjd_forwards, _ = run(adapter, decoder.decode, greedy)
    assert torch.equal(plain, codes)
    assert sjd_forwards <= forwards  # starting at position 1 never costs an extra forward


def test_accepted_tokens_per_forward_never_exceed_the_window_and_forwards_drop(adapter):
    for window in (2, 4, 8):
        decoder = JacobiDecoder(window)
        codes, forwards, _ = run(adapter, decoder.decode, SamplingConfig(3.0))
        assert max(decoder.stats.committed_per_forward) <= window
        assert sum(decoder.stats.committed_per_forward) == codes.shape[1]
    assert forwards < adapter.num_image_tokens  # a near-uniform random model accepts often


@torch.no_grad()
def test_sjd_samples_follow_the_models_distribution():
    """Chi-square two-sample test on every position's marginal and a pair's joint, 4 tokens x 4 codes."""
    adapter = mmeff.wrap(tiny_ar_image(seed=1, grid=2, codebook=4)).adapter
    sampling, n = SamplingConfig(2.0), 3000
    prompts = ["red circle"] * n
    plain, _, _ = run(adapter, None, sampling, seed=0, prompts=prompts)
    sjd, _, _ = run(adapter, JacobiDecoder(4, "random", (0, None)).decode, sampling, seed=1, prompts=prompts)
    for a, b in [(plain[:, i], sjd[:, i]) for i in range(4)] + [(plain[:, 1] * 4 + plain[:, 2],
                                                                 sjd[:, 1] * 4 + sjd[:, 2])]:
        ca, cb = torch.bincount(a, minlength=16).float(), torch.bincount(b, minlength=16).float()
        keep = (ca + cb) > 0
        chi2 = (((ca - cb) ** 2) / (ca + cb))[keep].sum().item()
        dof = int(keep.sum()) - 1
        assert chi2 < dof + 4 * (2 * dof) ** 0.5 + 10, (chi2, dof)  # far inside the 0.999 quantile


def test_lantern_with_no_neighbourhood_is_sjd(adapter):
    sampling = SamplingConfig(3.0)
    sjd, _, state = run(adapter, JacobiDecoder(4).decode, sampling)
    table = neighbour_table(adapter.code_vectors(), 8)
    for relax in (Relaxation(table, 0.0), Relaxation(table[:, :0], 0.5)):
        codes, _, lstate = run(adapter, JacobiDecoder(4, relaxation=relax).decode, sampling)
        assert torch.equal(codes, sjd) and torch.equal(state, lstate)


def test_lantern_accepts_at_least_as_often_as_sjd(adapter):
    sampling = SamplingConfig(3.0)
    table = neighbour_table(adapter.code_vectors(), 15)
    rates = []
    for relax in (None, Relaxation(table, 0.3)):
        decoder = JacobiDecoder(8, relaxation=relax)
        run(adapter, decoder.decode, sampling)
        rates.append(decoder.stats.as_dict()["acceptance_rate"])
    assert rates[1] >= rates[0]


def test_neighbour_table_excludes_the_code_itself_and_sorts_by_distance():
    vectors = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    assert neighbour_table(vectors, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_zipar_with_a_full_row_window_is_raster_decoding(adapter, sampling):
    plain, forwards, state = run(adapter, None, sampling)
    for window in (adapter.grid[1], 100):
        codes, zip_forwards, zstate = run(adapter, ZipARDecoder(window).decode, sampling)
        assert torch.equal(codes, plain) and zip_forwards == forwards and torch.equal(state, zstate)


def test_zipar_decodes_several_rows_per_forward(adapter):
    rows, cols = adapter.grid
    for window in (1, 2):
        decoder = ZipARDecoder(window)
        codes, forwards, _ = run(adapter, decoder.decode, SamplingConfig(3.0))
        assert forwards < rows * cols and decoder.stats.max_rows_in_flight > 1
        assert decoder.stats.proxies == rows - 2  # row 0 is decoded whole: its real last token opens row 1


def test_plugins_through_the_pipeline_and_removal_restores_plain_decoding():
    pipe = mmeff.wrap(tiny_ar_image())
    plain = pipe.generate_images(PROMPTS, guidance_scale=3.0, seed=0, output_type="pt")
    assert pipe.last_stats["sequential_forwards"] == 16
    for name, options, key in [("sjd", {"window": 4}, "acceptance_rate"),
                               ("lantern", {"window": 4, "k": 4, "delta": 0.2}, "acceptance_rate"),
                               ("zipar", {"window": 1}, "proxies")]:
        pipe.add_plugin(name, **options)
        images = pipe.generate_images(PROMPTS, guidance_scale=3.0, seed=0, output_type="pt")
        assert images.shape == plain.shape
        assert pipe.last_stats["sequential_forwards"] < 16 and key in pipe.last_stats[name]
        pipe.remove_plugin(name)
        assert torch.equal(pipe.generate_images(PROMPTS, guidance_scale=3.0, seed=0, output_type="pt"), plain)


def test_two_decode_loop_plugins_refuse_to_compose():
    pipe = mmeff.wrap(tiny_ar_image())
    pipe.add_plugin("sjd")
    for other in ("zipar", "lantern"):
        with pytest.raises(ConfigError, match="image_decode_loop"):
            pipe.add_plugin(other)
    assert list(pipe.plugins) == ["sjd"]


@pytest.mark.parametrize("name,options,match", [
    ("sjd", {"window": 0}, "window"), ("sjd", {"init": "zeros"}, "init"), ("sjd", {"start": 4, "stop": 2}, "stop"),
    ("lantern", {"k": -1}, "k must"), ("lantern", {"delta": 1.5}, "delta"), ("zipar", {"window": 0}, "window"),
    ("sjd", {"windw": 4}, "unknown option"),
])
def test_bad_configs_name_what_is_allowed(name, options, match):
    pipe = mmeff.wrap(tiny_ar_image())
    with pytest.raises(ConfigError, match=match):
        pipe.add_plugin(name, **options)
    assert not pipe.plugins


def test_unsupported_model_is_refused():
    from mmeff.testing import tiny_llava

    model, processor = tiny_llava()
    pipe = mmeff.wrap(model, processor)
    with pytest.raises(UnsupportedModelError, match="janus"):
        pipe.add_plugin("sjd")
    with pytest.raises(UnsupportedModelError, match="autoregressive image-token"):
        pipe.generate_images(["red circle"])


@pytest.mark.parametrize("name,options", [("sjd", {"window": 4}), ("lantern", {"window": 4, "k": 4}),
                                          ("zipar", {"window": 1})])
def test_every_plugin_generates_through_a_tiny_janus(name, options):
    from mmeff.testing.janus import tiny_janus

    pipe = mmeff.wrap(*tiny_janus())
    plain = pipe.generate_images(["a red circle"] * 2, guidance_scale=2.0, seed=0, output_type="pt")
    pipe.add_plugin(name, **options)
    images = pipe.generate_images(["a red circle"] * 2, guidance_scale=2.0, seed=0, output_type="pt")
    assert images.shape == plain.shape and pipe.last_stats["sequential_forwards"] < pipe.adapter.num_image_tokens
    pipe.remove_plugin(name)
    assert torch.equal(pipe.generate_images(["a red circle"] * 2, guidance_scale=2.0, seed=0, output_type="pt"), plain)


@pytest.mark.parametrize("name,options", [("sjd", {"window": 8}), ("lantern", {"window": 8, "k": 4}),
                                          ("zipar", {"window": 1})])
def test_cfg_rows_stay_paired(name, options):
    """Every forward feeds the conditional and unconditional row of an image the same codes."""
    pipe = mmeff.wrap(tiny_ar_image())
    fed = []
    original = pipe.adapter.embed_codes
    pipe.adapter.embed_codes = lambda codes: fed.append(codes.clone()) or original(codes)
    pipe.add_plugin(name, **options)
    pipe.generate_images(PROMPTS, guidance_scale=3.0, seed=0)
    assert fed and all(torch.equal(c[: len(PROMPTS)], c[len(PROMPTS) :]) for c in fed)
