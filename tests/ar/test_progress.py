"""``generate_images(progress=True)``: a bar over image positions that ends at the image's token count,
for plain decoding, a loop plugin (SJD) and continuous tokens, with the same images as without it."""

from __future__ import annotations

import pytest
import torch

import mmeff
from mmeff.testing.ar import tiny_ar_image
from mmeff.testing.car import tiny_continuous_ar


@pytest.mark.parametrize("plugin", [None, "sjd"])
def test_discrete_progress_bar_reaches_every_position(capsys, plugin) -> None:
    pipe = mmeff.wrap(tiny_ar_image())
    if plugin:
        pipe.add_plugin(plugin)
    quiet = pipe.generate_images(["a red circle", "two squares"], seed=0, output_type="pt")
    loud = pipe.generate_images(["a red circle", "two squares"], seed=0, output_type="pt", progress=True)
    err = capsys.readouterr().err
    n = pipe.adapter.num_image_tokens
    assert torch.equal(quiet, loud)
    assert f"{n}/{n}" in err and "image tokens" in err


def test_continuous_progress_bar_reaches_every_position(capsys) -> None:
    pipe = mmeff.wrap(tiny_continuous_ar())
    quiet = pipe.generate_images(["a red circle"], seed=0, output_type="pt", diffusion_steps=4)
    assert capsys.readouterr().err == ""
    loud = pipe.generate_images(["a red circle"], seed=0, output_type="pt", diffusion_steps=4, progress=True)
    n = pipe.adapter.num_image_tokens
    assert torch.equal(quiet, loud) and f"{n}/{n}" in capsys.readouterr().err
