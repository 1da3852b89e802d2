"""Differentiable reward models for reward-based noise optimisation (ReNO).

Each reward maps images in [0, 1] and their prompts to one score per image, differentiable
with respect to the pixels. ``get_reward(name).tiny()`` builds a random instance of the
same architecture offline; ``load_reward(name, path)`` loads released weights.
"""

from .base import Reward
from .registry import get_reward, list_rewards, load_reward, parse_rewards, register_reward

__all__ = ["Reward", "get_reward", "list_rewards", "load_reward", "parse_rewards", "register_reward"]
