"""The ConvNet of the dataset-condensation papers (DC, DSA, DCC).

``depth`` blocks of [3x3 convolution (``width`` channels) -> instance norm -> ReLU -> 2x2 average
pooling], then one linear classifier (DC Sec. 4; Gidaris & Komodakis' ConvNet with instance
norm). The DC papers use width 128, depth 3. For 28x28 inputs the first convolution pads by 3
instead of 1, so the feature maps are those of a 32x32 input (the official code does the same for
its 28x28 datasets). Shapes for a (B, 1, 28, 28) input at the defaults::

    (B, 1, 28, 28) -> conv pad 3 -> (B, 128, 32, 32) -> pool -> (B, 128, 16, 16)
    -> block 2 -> (B, 128, 8, 8) -> block 3 -> (B, 128, 4, 4) -> flatten (B, 2048) -> (B, C)
"""

from __future__ import annotations

from torch import Tensor, nn

from pixcon.condense.options import NORMS

__all__ = ["NORMS", "ConvNet"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":  # per-image, per-channel statistics with an affine map, as in DC
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class ConvNet(nn.Module):
    """The DC papers' ConvNet (see the module docstring).

    Args:
        in_channels: Input channels (1 for Fashion-MNIST, 3 for RGB).
        num_classes: Outputs C.
        image_size: Input side (square), at least 2 ** depth; 28 pads the first convolution by 3.
        width: Channels of every convolution (128 in the papers).
        depth: Number of conv blocks (3 in the papers).
        norm: ``"instancenorm"`` (the papers'), ``"batchnorm"`` or ``"none"``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int = 32,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
        if min(in_channels, num_classes, width, depth) < 1:
            raise ValueError(
                f"in_channels, num_classes, width and depth must be >= 1, got "
                f"{in_channels}, {num_classes}, {width}, {depth}"
            )
        side = 32 if image_size == 28 else image_size
        if side < 2**depth:
            raise ValueError(f"image_size {image_size} is too small for depth {depth} (needs >= {2**depth})")
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            pad = 3 if d == 0 and image_size == 28 else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=pad),
                _norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            channels = width
            side //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, num_classes)
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> logits (B, C)."""
        return self.classifier(self.features(x).flatten(1))  # (B, width * h * w) -> (B, C)
