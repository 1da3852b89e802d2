"""Finding released reward weights, and one error message for when they are not there.

Weights are looked up by hub id (in the local HF cache when offline) or by local path.
Whatever goes wrong, the user gets a :class:`ConfigError` naming the id or path and saying
that weights cannot be fetched here, instead of a deep hub/open_clip traceback.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError


def weights_error(reward: str, source: str, reason: object) -> ConfigError:
    return ConfigError(
        f"{reward}: could not load weights from {source!r} ({reason}). Weights cannot be fetched here: "
        f"download them where there is network access and pass a local path, e.g. load_reward({reward!r}, path=...)"
    )


@contextmanager
def loading(reward: str, source: str):
    """Turn any failure inside the block into :func:`weights_error` (ConfigErrors pass through)."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:  # hub, torch, open_clip and transformers all raise differently
        raise weights_error(reward, source, f"{type(e).__name__}: {e}") from e


def resolve_file(reward: str, source: str, filename: str) -> Path:
    """``source`` is a file, a folder holding ``filename``, or a hub repo id holding ``filename``."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise weights_error(reward, source, f"no {filename} in this folder")
    if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise weights_error(reward, source, "no such file")
    from huggingface_hub import hf_hub_download

    with loading(reward, f"{source}/{filename}"):
        return Path(hf_hub_download(source, filename))
