"""Projection head for pixel embeddings (Zhao et al.: 1x1 convolutions on decoder features)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """``num_layers`` 1x1 convolutions, BN + ReLU between them, L2-normalised output.

    With ``num_layers=1`` it is a single linear 1x1 projection. The last layer has neither BN
    nor ReLU, as in SimCLR's MLP head, so the embedding can use the whole sphere.

    Args:
        in_channels: Decoder feature channels.
        out_channels: Embedding dimension D (256 by default).
        num_layers: 1 to 3.
        hidden_channels: Width of the hidden layers; defaults to ``in_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        num_layers: int = 2,
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_layers <= 3:
            raise ValueError(f"projection num_layers must be in [1, 3], got {num_layers}")
        if out_channels < 1:
            raise ValueError(f"projection out_channels must be >= 1, got {out_channels}")
        hidden = hidden_channels or in_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_layers - 1):
            layers += [
                nn.Conv2d(channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
            channels = hidden
        layers.append(nn.Conv2d(channels, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C_dec, h, w) -> (B, D, h, w), unit norm along D."""
        return F.normalize(self.net(features), dim=1)
