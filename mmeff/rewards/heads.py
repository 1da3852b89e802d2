"""The 5-linear score head shared by ImageReward and the LAION aesthetic predictor.

Both released heads are ``nn.Sequential(Linear(d, 1024), Dropout(0.2), Linear(1024, 128),
Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))`` with no
activations; building the same Sequential keeps the released indices (0, 2, 4, 6, 7) so
their state dicts load without renaming.
"""

from __future__ import annotations

from torch import nn

HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)


def score_mlp(in_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = (in_dim, *HIDDEN)
    for i in range(len(HIDDEN)):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(DROPOUT):
            layers.append(nn.Dropout(DROPOUT[i]))
    layers.append(nn.Linear(HIDDEN[-1], 1))
    return nn.Sequential(*layers)
