"""Architectures of the mini zoo: real torchvision classes, shrunk for 32x32 inputs.

Model Spider's zoos (specs/model_spider.md §1) hold ResNet, DenseNet, MobileNet, MNASNet and Inception
models; the mini zoo keeps four families with different inductive biases (plain residual, dense
concatenation, channel shuffle, inverted residual) at 0.1-0.3 M parameters each, so that no family
wins only because it is much bigger. Every model's *feature* is the input of its last Linear layer
(the convention of the converters' feature hook), 128-d for every family except DenseNet.

Changes from the ImageNet definitions (why): a 7x7 stride-2 stem plus max-pool would shrink a 32x32
image to 8x8 before the first block, so every stem is a 3x3 stride-2 conv (16x16 after it; DenseNet
keeps its max-pool and starts its dense blocks at 8x8, which keeps its concatenations affordable);
widths and depths are reduced; the wide 1x1 "last channel" convs (1024/1280) are cut to 128. Training
costs ~0.4-0.8 ms per image on 2 CPU cores for every family.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models import resnet as tv_resnet
from torchvision.ops.misc import Conv2dNormActivation

ARCHITECTURES = ("resnet", "densenet", "shufflenet", "mobilenet")


def _init_like_torchvision(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-uniform Linear (as the torchvision constructors do)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.in_features)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


def small_resnet(num_classes: int, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)) -> models.ResNet:
    """torchvision ResNet-10 (one BasicBlock per stage), a 3x3 stride-2 stem and no max-pool."""
    model = models.ResNet(tv_resnet.BasicBlock, list(blocks), num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, widths[0], 3, 2, 1, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.maxpool = nn.Identity()
    model.inplanes = widths[0]  # _make_layer reads and advances this
    model.layer1 = model._make_layer(tv_resnet.BasicBlock, widths[0], blocks[0])
    model.layer2 = model._make_layer(tv_resnet.BasicBlock, widths[1], blocks[1], stride=2)
    model.layer3 = model._make_layer(tv_resnet.BasicBlock, widths[2], blocks[2], stride=2)
    model.layer4 = model._make_layer(tv_resnet.BasicBlock, widths[3], blocks[3], stride=2)
    model.fc = nn.Linear(widths[3], num_classes)
    _init_like_torchvision(model)
    return model


def small_densenet(num_classes: int) -> models.DenseNet:
    """torchvision DenseNet (growth 16, three blocks of 4 layers), a 3x3 stride-2 stem + its max-pool."""
    model = models.DenseNet(growth_rate=16, block_config=(4, 4, 4), num_init_features=32, bn_size=4,
                            num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
    # pool0 (3x3 max-pool, stride 2) is kept: the first dense block runs at 8x8.
    _init_like_torchvision(model)
    return model


def small_shufflenet(num_classes: int) -> models.ShuffleNetV2:
    """torchvision ShuffleNetV2 (stages 2-3-2, channels 24/64/128/192, 128-d last conv), 3x3 stride-2
    stem without its max-pool."""
    model = models.ShuffleNetV2(stages_repeats=[2, 3, 2], stages_out_channels=[24, 64, 128, 192, 128],
                                num_classes=num_classes)
    model.conv1[0] = nn.Conv2d(3, 24, 3, 2, 1, bias=False)
    model.maxpool = nn.Identity()
    _init_like_torchvision(model)
    return model


def small_mobilenet(num_classes: int) -> models.MobileNetV2:
    """torchvision MobileNetV2 at width 0.5, shortened (11 inverted residual blocks), 128-d last conv.

    Width 0.25 barely learns at 32x32; 0.5 does. The stem keeps its stride 2 (16x16 after it) so the
    network costs about as much as the others.
    """
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 3, 2], [6, 96, 2, 1]]
    model = models.MobileNetV2(num_classes=num_classes, width_mult=0.5,
                               inverted_residual_setting=setting, dropout=0.0)
    stem = model.features[0]
    stem[0] = nn.Conv2d(3, stem[0].out_channels, 3, 2, 1, bias=False)
    last_in = model.features[-1][0].in_channels
    model.features[-1] = Conv2dNormActivation(last_in, 128, kernel_size=1, activation_layer=nn.ReLU6)
    model.last_channel = 128
    model.classifier[-1] = nn.Linear(128, num_classes)
    _init_like_torchvision(model)
    return model


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet": small_resnet,
    "densenet": small_densenet,
    "shufflenet": small_shufflenet,
    "mobilenet": small_mobilenet,
}


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model of family `arch` with a `num_classes`-way head."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(BUILDERS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return BUILDERS[arch](num_classes)


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final Linear layer (its input is the model's feature)."""
    if isinstance(model, (models.ResNet, models.ShuffleNetV2)):
        return model.fc
    if isinstance(model, models.DenseNet):
        return model.classifier
    if isinstance(model, models.MobileNetV2):
        return model.classifier[-1]
    raise ValueError(f"no known classifier in {type(model).__name__}")


def replace_classifier(model: nn.Module, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """Puts a freshly initialised `num_classes`-way head on `model` (in place) and returns it."""
    old = classifier_of(model)
    head = nn.Linear(old.in_features, num_classes)
    bound = 1.0 / math.sqrt(old.in_features)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    if isinstance(model, (models.ResNet, models.ShuffleNetV2)):
        model.fc = head
    elif isinstance(model, models.DenseNet):
        model.classifier = head
    else:
        model.classifier[-1] = head
    return head


def feature_dim(model: nn.Module) -> int:
    return classifier_of(model).in_features


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
