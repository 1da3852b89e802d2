"""The shapes testbed: a synthetic world with exact ground truth for measuring quality offline."""
