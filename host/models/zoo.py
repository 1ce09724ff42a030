"""The builtin model zoo; every entry takes ``width``, ``num_classes`` and ``input_shape``.

Defaults fit ``builtin:digits`` (1x8x8 images, 10 classes). ``width`` scales every hidden channel
count, so a half-width student of a zoo model is ``load_model("builtin:NAME", width=0.5)``. The
architectures use only ops litert-torch lowers (conv, depthwise conv, linear, relu/relu6, pooling,
add) so each one exports to every precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from host.errors import ModelSpecError
from host.models import MODELS, ModelBundle

DEFAULT_SHAPE = (1, 8, 8)


def _ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _check(
    width: float, num_classes: int, input_shape: Sequence[int], dims: int
) -> tuple[int, ...]:
    if not width > 0:
        raise ModelSpecError(f"width must be > 0, got {width}")
    if num_classes < 2:
        raise ModelSpecError(f"num_classes must be at least 2, got {num_classes}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != dims or any(d < 1 for d in shape):
        raise ModelSpecError(
            f"input_shape must have {dims} positive dims (without the batch), got {input_shape}"
        )
    return shape


def _bundle(
    module: nn.Module, shape: tuple[int, ...], name: str, num_classes: int, width: float
) -> ModelBundle:
    return ModelBundle(
        module=module.eval(),
        example_inputs=(torch.randn(1, *shape),),
        name=name if width == 1.0 else f"{name}_w{width:g}",
        task="classification",
        num_classes=num_classes,
        factory=f"builtin:{name}",
        width=width,
    )


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions and two linear layers; ~40k parameters at width 1."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3, hidden = _ch(16, width), _ch(32, width), _ch(64, width), _ch(64, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 4, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(x)))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 of MLPerf Tiny image classification: a stem and three residual stacks (16/32/64)."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = _ch(16, width), _ch(32, width), _ch(64, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU()
        )
        self.stack1 = _ResBlock(c1, c1, 1)
        self.stack2 = _ResBlock(c1, c2, 2)
        self.stack3 = _ResBlock(c2, c3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """A small MobileNetV2-style net (inverted residuals) with a width multiplier."""

    # (expansion, channels, repeats, stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1))

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        stem = _ch(32, width)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(),
        ]
        cin = stem
        for expand, channels, repeats, stride in self.SETTINGS:
            cout = _ch(channels, width)
            for i in range(repeats):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        last = _ch(128, width)
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class DSCNN(nn.Module):
    """DS-CNN (MLPerf Tiny keyword spotting): a conv stem then depthwise-separable blocks."""

    def __init__(
        self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1, blocks: int = 4
    ) -> None:
        super().__init__()
        c = _ch(64, width)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        ]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers, a classifier."""

    def __init__(self, in_features: int, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        h1, h2 = _ch(128, width), _ch(64, width)
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU()
        )
        self.classifier = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


@MODELS.register("digits_cnn")
def digits_cnn(
    width: float = 1.0, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_SHAPE
) -> ModelBundle:
    shape = _check(width, num_classes, input_shape, 3)
    return _bundle(DigitsCNN(width, num_classes, shape[0]), shape, "digits_cnn", num_classes, width)


@MODELS.register("resnet8")
def resnet8(
    width: float = 1.0, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_SHAPE
) -> ModelBundle:
    shape = _check(width, num_classes, input_shape, 3)
    return _bundle(ResNet8(width, num_classes, shape[0]), shape, "resnet8", num_classes, width)


@MODELS.register("mobilenetv2")
def mobilenetv2(
    width: float = 1.0, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_SHAPE
) -> ModelBundle:
    shape = _check(width, num_classes, input_shape, 3)
    return _bundle(
        MobileNetV2(width, num_classes, shape[0]), shape, "mobilenetv2", num_classes, width
    )


@MODELS.register("ds_cnn")
def ds_cnn(
    width: float = 1.0, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_SHAPE
) -> ModelBundle:
    shape = _check(width, num_classes, input_shape, 3)
    return _bundle(DSCNN(width, num_classes, shape[0]), shape, "ds_cnn", num_classes, width)


@MODELS.register("mlp")
def mlp(
    width: float = 1.0, num_classes: int = 10, input_shape: Sequence[int] = DEFAULT_SHAPE
) -> ModelBundle:
    shape = _check(width, num_classes, input_shape, len(tuple(input_shape)) or 1)
    features = 1
    for d in shape:
        features *= d
    return _bundle(MLP(features, width, num_classes), shape, "mlp", num_classes, width)
