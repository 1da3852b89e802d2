"""Autoregressive image generation over continuous tokens (MAR / Harmon / FlowAR style)."""
