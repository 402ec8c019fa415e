"""Training loops of the mini zoo: pretraining, full fine-tuning, frozen features and linear probes.

The ground truth of Model Spider (specs/model_spider.md §0) is the test accuracy of a PTM after full
fine-tuning on a task; a linear probe on frozen features is recorded beside it as a cheaper label.

CPU conventions (measured on the 2-core build machine): denormals are flushed (10-50x faster), tensors
are channels_last, the thread count is fixed, and torch runs its deterministic algorithms, so the same
seed gives the same weights. Images are [N, 32, 32, 3] uint8 and are scaled to roughly [-2, 2].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from converters.minizoo import architectures


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training schedule (SGD with Nesterov momentum, cosine learning rate, linear warm-up)."""

    epochs: float = 4.0
    batch_size: int = 64
    learning_rate: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    max_shift: int = 2  # random translation in pixels (no flips: glyph and arrow classes are chiral)


def configure_torch(threads: int = 2) -> None:
    """Fixed threads, flushed denormals, deterministic kernels (call once per process)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, 32, 32, 3] uint8 -> [N, 3, 32, 32] float32 channels_last, (x / 255 - 0.5) / 0.25."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] uint8, got {images.shape} {images.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    tensor = (tensor / 255.0 - 0.5) / 0.25
    return tensor.contiguous(memory_format=torch.channels_last)


def _random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translates each image by up to max_shift pixels; the uncovered border is 0 (mid-grey after
    normalisation)."""
    if max_shift == 0:
        return batch
    size = batch.shape[-1]
    padded = F.pad(batch, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator).tolist()
    shifted = torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets)])
    return shifted.contiguous(memory_format=torch.channels_last)


def train_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray, config: TrainConfig,
                     seed: int, log: Callable[[str], None] | None = None) -> nn.Module:
    """Trains all parameters of `model` with cross-entropy (in place); returns it in eval mode.

    Args:
      images: [N, 32, 32, 3] uint8.  labels: [N] int64.
      seed: fixes the batch order and the augmentation.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = images_to_tensor(images)
    targets = torch.from_numpy(np.asarray(labels, np.int64))
    num = inputs.shape[0]
    steps_per_epoch = max(1, math.ceil(num / config.batch_size))
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    warmup = max(1, round(config.warmup_fraction * total_steps))
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if param.ndim > 1 else no_decay).append(param)
    optimizer = torch.optim.SGD([dict(params=decay, weight_decay=config.weight_decay),
                                 dict(params=no_decay, weight_decay=0.0)],
                                lr=config.learning_rate, momentum=config.momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup,
                                    0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))))
    model.to(memory_format=torch.channels_last)
    model.train()
    step, order = 0, torch.empty(0, dtype=torch.int64)
    while step < total_steps:
        if order.numel() == 0:
            order = torch.randperm(num, generator=generator)
        batch_index, order = order[:config.batch_size], order[config.batch_size:]
        batch = _random_shift(inputs[batch_index], config.max_shift, generator)
        loss = F.cross_entropy(model(batch), targets[batch_index])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        if log is not None and (step % 200 == 0 or step == total_steps):
            log(f"step {step}/{total_steps} loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features (input of the last Linear) and logits of `model` in eval mode.

    Returns:
      features [N, D] float32, logits [N, C] float32.
    """
    model.eval()
    captured: list[torch.Tensor] = []
    hook = architectures.classifier_of(model).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0]))
    features, logits = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            logits.append(model(images_to_tensor(images[start:start + batch_size])).numpy())
            features.append(captured.pop().numpy())
    finally:
        hook.remove()
    return np.concatenate(features).astype(np.float32), np.concatenate(logits).astype(np.float32)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    _, logits = predict(model, images)
    return float(100.0 * np.mean(logits.argmax(1) == np.asarray(labels)))


def pretrain(arch: str, num_classes: int, images: np.ndarray, labels: np.ndarray, config: TrainConfig,
             seed: int, log: Callable[[str], None] | None = None) -> nn.Module:
    """A model of family `arch` trained from scratch (seeded initialisation and batch order)."""
    torch.manual_seed(seed)
    model = architectures.build_model(arch, num_classes)
    return train_classifier(model, images, labels, config, seed, log)


def finetune(arch: str, state_dict: dict, num_source_classes: int, train_images: np.ndarray,
             train_labels: np.ndarray, test_images: np.ndarray, test_labels: np.ndarray,
             config: TrainConfig, seed: int) -> float:
    """Full fine-tuning of a pretrained model with a new head; returns the test accuracy in percent."""
    torch.manual_seed(seed)
    model = architectures.build_model(arch, num_source_classes)
    model.load_state_dict(state_dict)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    architectures.replace_classifier(model, num_classes, torch.Generator().manual_seed(seed))
    train_classifier(model, train_images, train_labels, config, seed)
    return accuracy(model, test_images, test_labels)


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, regularization: float = 1.0, max_iter: int = 100) -> float:
    """Multinomial logistic regression on standardised frozen features; test accuracy in percent.

    Minimises mean cross-entropy + ||W||^2 / (2 * regularization * N) (sklearn's C convention) with
    full-batch L-BFGS in float64: milliseconds for our sizes, where sklearn's solver took seconds.

    Args:
      train_features: [N, D]; test_features: [M, D]; labels int in 0..C-1.
    """
    mean = train_features.mean(0)
    scale = train_features.std(0) + 1e-6
    x = torch.from_numpy((train_features - mean) / scale).double()
    x_test = torch.from_numpy((test_features - mean) / scale).double()
    y = torch.from_numpy(np.array(train_labels, np.int64))  # a writable copy
    num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * regularization * x.shape[0])
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * (weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(1).numpy()
    return float(100.0 * np.mean(predicted == np.asarray(test_labels)))


def state_dict_float16(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters and buffers as numpy arrays; floats stored as float16 (for shipping)."""
    out = {}
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().numpy()
        out[name] = array.astype(np.float16) if array.dtype.kind == "f" else array
    return out


def load_float16_state(arch: str, num_classes: int, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Rebuilds a model from `state_dict_float16` arrays (floats back to float32), in eval mode."""
    model = architectures.build_model(arch, num_classes)
    state = {name: torch.from_numpy(np.asarray(array, np.float32) if array.dtype.kind == "f"
                                    else np.asarray(array)) for name, array in arrays.items()}
    model.load_state_dict(state)
    return model.eval()
