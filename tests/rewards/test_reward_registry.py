"""The reward registry: names, ReNO's constants, clear errors."""

import pytest

from mmeff.errors import ConfigError
from mmeff.rewards import Reward, get_reward, list_rewards, load_reward, register_reward

#: (offset c_i, default weight w_i) from ReNO's released code; shapes_clip is the testbed's own
RENO = {"hpsv2": (1, 5.0), "imagereward": (2, 1.0), "clip": (100, 0.01), "pickscore": (30, 0.05),
        "aesthetic": (10, 0.0), "shapes_clip": (100, 1.0)}


def test_names_and_constants():
    assert list_rewards() == sorted(RENO)
    for name, (offset, weight) in RENO.items():
        cls = get_reward(name)
        assert issubclass(cls, Reward) and cls.name == name
        assert (cls.offset, cls.default_weight) == (offset, weight)


def test_unknown_name_lists_available():
    with pytest.raises(KeyError, match="unknown reward 'hps'.*hpsv2"):
        get_reward("hps")


def test_register_rejects_clashes_and_bad_names():
    class Clash(Reward):
        name, offset, default_weight = "clip", 1.0, 1.0

    with pytest.raises(ValueError, match="already registered"):
        register_reward(Clash)

    class Bad(Reward):
        name, offset, default_weight = "Bad-Name", 1.0, 1.0

    with pytest.raises(ValueError, match="lowercase"):
        register_reward(Bad)

    class NoOffset(Reward):
        name, default_weight = "no_offset", 1.0

    with pytest.raises(ValueError, match="offset"):
        register_reward(NoOffset)
    assert "no_offset" not in list_rewards()


def test_load_reward_dispatches_by_name():
    with pytest.raises(ConfigError, match="shapes_clip.*/nonexistent"):
        load_reward("shapes_clip", "/nonexistent")
