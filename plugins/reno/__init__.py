"""ReNO: reward-based noise optimisation for text-to-image pipelines."""

from .config import PAPER_REWARDS, RenoConfig
from .plugin import RenoPlugin
from .search import RewardSet, SearchResult, search_noise

__all__ = ["PAPER_REWARDS", "RenoConfig", "RenoPlugin", "RewardSet", "SearchResult", "search_noise"]
