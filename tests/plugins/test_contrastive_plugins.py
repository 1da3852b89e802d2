"""Every contrastive-decoding plugin against the shared behaviour (mmeff.testing.contrastive_tests)."""

from __future__ import annotations

import torch

from mmeff.testing.contrastive_tests import ContrastivePluginTesterMixin

COMMON_BAD = [{"alpha": -0.5}, {"beta": 0.0}, {"beta": 1.5}, {"separate": "yes"}]


class TestVCD(ContrastivePluginTesterMixin):
    plugin_name = "vcd"
    vision_passes = 2  # the noised copy is a second image
    neutral_options = {"alpha": 0.0}
    active_options = {"alpha": 1.0, "beta": 0.1}
    bad_options = [*COMMON_BAD, {"noise_step": 1000}, {"noise_step": -1}, {"noise_seed": 1.5}]


class TestICD(ContrastivePluginTesterMixin):
    plugin_name = "icd"
    neutral_options = {"alpha": 0.0}
    active_options = {"alpha": 1.0}
    bad_options = [*COMMON_BAD, {"instruction": ""}]


class TestLQCD(ContrastivePluginTesterMixin):
    plugin_name = "lqcd"
    neutral_options = {"alpha": 0.0}
    active_options = {"alpha": 1.0}
    strong_options = {"alpha": 20.0, "beta": 1e-6}
    bad_options = [*COMMON_BAD, {"leading": ""}, {"leading": []}, {"tag": " "}]


class TestM3ID(ContrastivePluginTesterMixin):
    plugin_name = "m3id"
    neutral_options = {"alpha": 0.0}
    active_options = {"alpha": 1.0}
    strong_options = {"alpha": 200.0, "beta": 1e-3}  # w_1 = e^0.02 - 1 = 0.02 at the first answer token
    bad_options = [*COMMON_BAD, {"lam": 0}, {"threshold": 0}, {"threshold": 1.2}]


class TestDAMRO(ContrastivePluginTesterMixin):
    plugin_name = "damro"
    vision_passes = 2  # one extra pass reads the CLS (Qwen: received) attention
    factories = ("llava-sdpa", "llava-eager", "llava_next-sdpa", "qwen2_vl-sdpa", "qwen2_vl-eager", "qwen2_5_vl-sdpa",
                 "qwen3_vl-sdpa", "internvl-sdpa", "internvl-eager")
    neutral_options = {"alpha": 0.0, "k": 4}
    active_options = {"alpha": 2.0, "k": 4}
    bad_options = [*COMMON_BAD, {"k": 0}, {"k": 17}, {"k": 2.5}]


class TestVDGD(ContrastivePluginTesterMixin):
    plugin_name = "vdgd"
    vision_passes = 2  # the description call and the answer call
    positive_is_plain = False
    neutral_options = {"alpha": 0.0, "describe_prompt": "describe the image", "description_tokens": 6}
    # the deterministic variant: the shared tests compare runs token for token (the release samples; see
    # tests/plugins/test_vdgd_release.py)
    active_options = {"describe_prompt": "describe the image", "description_tokens": 6, "choice": "greedy",
                      "prefix": "turn"}
    strong_options = {"beta": 1e-6}

    def assert_effect(self, pipe, inputs) -> None:
        """With (almost) every token plausible, the first answer token is the description's best token."""
        pipe.remove_plugin("vdgd")
        pipe.add_plugin("vdgd", **{**self.active_options, **self.strong_options})
        tokens = self.generate(pipe)
        plugin = pipe.plugins["vdgd"]
        assert len(pipe.last_stats["vdgd"]["descriptions"]) == tokens.shape[0]
        assert torch.equal(tokens[:, 0], plugin._scores.argmax(-1))
        stats = pipe.last_stats["vdgd"]  # the description pass counts (issue 29)
        assert 1 <= stats["description_forwards"] <= 6 and stats["description_s"] > 0
        assert stats["forwards"] == stats["answer_forwards"] + stats["description_forwards"]
    bad_options = [*COMMON_BAD[:3], {"reduce": "max"}, {"describe_prompt": ""}, {"description_tokens": 0},
                   {"separate": True}, {"choice": "beam"}, {"prefix": True}, {"top_p": 0}, {"temperature": -1}]
