"""CIFAR architectures, written plainly in the torchvision style.

Two families of published CIFAR-10 checkpoints are supported, and their state-dict
keys and tensor shapes are reproduced exactly so those files load unchanged:

* chenyaofo/pytorch-cifar-models (BSD-3-Clause): ``resnet20/32/44/56`` with 1x1-conv
  ("option B") shortcuts, ``vgg11_bn ... vgg19_bn`` and ``mobilenetv2_x0_5 ... x1_4``.
  They differ from torchvision's ImageNet versions only where 32x32 inputs demand it
  (3x3 stem, no stem max-pool, stride 1 in MobileNetV2's stem and second stage).
* akamaster/pytorch_resnet_cifar10 (BSD-2-Clause): ``akamaster_resnet20/32/44/56``,
  the original CIFAR ResNets of He et al. (2016) with parameter-free "option A"
  shortcuts (stride-2 subsampling plus zero channel padding) and a head named ``linear``.

Architectures know nothing of weights; pretrained checkpoints live in :mod:`dfkd_core.zoo`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["create_model", "list_architectures"]

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _ARCHITECTURES:
        raise RuntimeError(f"architecture {fn.__name__!r} is registered twice")
    _ARCHITECTURES[fn.__name__] = fn
    return fn


def list_architectures(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style ``pattern``."""
    return sorted(name for name in _ARCHITECTURES if fnmatch(name, pattern))


def create_model(arch: str, num_classes: int = 10) -> nn.Module:
    """Build a randomly initialised architecture by name, e.g. ``create_model("resnet20")``."""
    try:
        builder = _ARCHITECTURES[arch]
    except KeyError:
        from difflib import get_close_matches

        close = get_close_matches(arch, _ARCHITECTURES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown architecture {arch!r}.{hint} Valid architectures: {', '.join(list_architectures())}."
        ) from None
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return builder(num_classes=num_classes)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


# --- ResNet (chenyaofo layout: 1x1 projection shortcuts) -------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: three stages of 16/32/64 channels, ``blocks_per_stage`` each."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.inplanes = 16
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@_register
def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


@_register
def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes)


@_register
def resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(7, num_classes)


@_register
def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)


# --- ResNet (akamaster layout: parameter-free option-A shortcuts) -----------------------------


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


class OptionABlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AkamasterResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016), Sec. 4.2, as in akamaster/pytorch_resnet_cifar10."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [OptionABlock(in_planes, planes, stride)]
        layers += [OptionABlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@_register
def akamaster_resnet20(num_classes: int = 10) -> AkamasterResNet:
    return AkamasterResNet(3, num_classes)


@_register
def akamaster_resnet32(num_classes: int = 10) -> AkamasterResNet:
    return AkamasterResNet(5, num_classes)


@_register
def akamaster_resnet44(num_classes: int = 10) -> AkamasterResNet:
    return AkamasterResNet(7, num_classes)


@_register
def akamaster_resnet56(num_classes: int = 10) -> AkamasterResNet:
    return AkamasterResNet(9, num_classes)


# --- VGG with BatchNorm (chenyaofo layout) ----------------------------------------------------

_VGG_LAYOUTS: dict[str, Sequence[int | str]] = {  # channels per conv, "M" = 2x2 max-pool
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_bn": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG with BatchNorm; five max-pools take 32x32 to 1x1, so the head sees 512 features."""

    def __init__(self, layout: Sequence[int | str], num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [
                    nn.Conv2d(in_channels, int(item), 3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                in_channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@_register
def vgg11_bn(num_classes: int = 10) -> VGG:
    return VGG(_VGG_LAYOUTS["vgg11_bn"], num_classes)


@_register
def vgg13_bn(num_classes: int = 10) -> VGG:
    return VGG(_VGG_LAYOUTS["vgg13_bn"], num_classes)


@_register
def vgg16_bn(num_classes: int = 10) -> VGG:
    return VGG(_VGG_LAYOUTS["vgg16_bn"], num_classes)


@_register
def vgg19_bn(num_classes: int = 10) -> VGG:
    return VGG(_VGG_LAYOUTS["vgg19_bn"], num_classes)


# --- MobileNetV2 (chenyaofo layout) -----------------------------------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_residual = stride == 1 and inp == oup
        layers: list[nn.Module] = [ConvBNReLU6(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, bias=False),  # linear bottleneck
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s); stem and stage 2 use stride 1 on CIFAR
_MOBILENETV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 10):
        super().__init__()
        in_channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=1)]
        for t, c, n, s in _MOBILENETV2_STAGES:
            out_channels = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@_register
def mobilenetv2_x0_5(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(0.5, num_classes)


@_register
def mobilenetv2_x0_75(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(0.75, num_classes)


@_register
def mobilenetv2_x1_0(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(1.0, num_classes)


@_register
def mobilenetv2_x1_4(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(1.4, num_classes)
