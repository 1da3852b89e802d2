"""Autoregressive image-token generation: the model container, the decode session, sampling and loops."""
