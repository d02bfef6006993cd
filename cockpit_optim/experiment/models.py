"""The model zoo of the experiments; :func:`build_model` sizes a model for a data set.

Each model schema names its builder in ``_target_``: one of the ``*_for`` functions, which take
the :class:`~.data.DataInfo` and the schema's fields and call the architecture function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError, builder
from .data import DataInfo

__all__ = [
    "PARAMS_3C3D",
    "PARAMS_ALLCNNC_CIFAR100",
    "TransformerClassifier",
    "activation",
    "allcnnc",
    "allcnnc_for",
    "build_model",
    "c3d3",
    "c3d3_for",
    "digits_cnn",
    "digits_cnn_for",
    "logreg",
    "logreg_for",
    "mlp",
    "mlp_for",
    "num_parameters",
    "transformer_for",
]

PARAMS_3C3D = 895_210  # on CIFAR-10 (3 x 32 x 32, 10 classes)
PARAMS_ALLCNNC_CIFAR100 = 1_387_108

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def activation(name: Any) -> nn.Module:
    """A new activation module for ``name`` (a string or an :class:`~.config.Activation`)."""
    key = str(getattr(name, "value", name))
    if key not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {key!r}; valid: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[key]()


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _flat_size(features: nn.Module, input_shape: tuple[int, ...], name: str) -> int:
    """Number of features after ``features`` for one input of ``input_shape``."""
    try:
        with torch.no_grad():
            return math.prod(features(torch.zeros(1, *input_shape)).shape[1:])
    except RuntimeError as error:
        raise ConfigError(
            f"model {name} cannot take inputs of shape {input_shape}: {error}"
        ) from None


def _image_shape(info: DataInfo, name: str) -> tuple[int, int, int]:
    if len(info.input_shape) != 3 or info.vocab_size is not None:
        raise ConfigError(
            f"model {name} needs images (channels, height, width), got inputs of shape "
            f"{info.input_shape}; use mlp or logreg for vectors, transformer for token sequences"
        )
    return info.input_shape  # type: ignore[return-value]


def _vector_input(info: DataInfo, name: str) -> int:
    if info.vocab_size is not None:
        raise ConfigError(
            f"model {name} needs float inputs, the data are token ids: use transformer"
        )
    return math.prod(info.input_shape)


# ----------------------------------------------------------------------------------- models
def logreg(in_features: int, outputs: int) -> nn.Module:
    """A linear model on flattened inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, outputs))


def mlp(in_features: int, outputs: int, hidden: list[int], act: Any = "relu") -> nn.Module:
    """Fully connected network on flattened inputs (784-256-10: 203,530 parameters)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), activation(act)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, outputs))


def _pool() -> nn.Module:
    """3x3 max-pool, stride 2, with TensorFlow ``same`` output sizes (28 -> 14, 12 -> 6, 6 -> 3)."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def c3d3(input_shape: tuple[int, int, int], outputs: int, act: Any = "relu") -> nn.Module:
    """DeepOBS 3C3D: conv 64 5x5 valid, conv 96 3x3 valid, conv 128 3x3 same (each followed by the
    activation and a pool), dense 512, 256, outputs."""
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 64, kernel_size=5),
        activation(act),
        _pool(),
        nn.Conv2d(64, 96, kernel_size=3),
        activation(act),
        _pool(),
        nn.Conv2d(96, 128, kernel_size=3, padding=1),
        activation(act),
        _pool(),
        nn.Flatten(),
    )
    width = _flat_size(features, input_shape, "3c3d")
    return nn.Sequential(
        *features,
        nn.Linear(width, 512),
        activation(act),
        nn.Linear(512, 256),
        activation(act),
        nn.Linear(256, outputs),
    )


def digits_cnn(
    input_shape: tuple[int, int, int],
    outputs: int,
    channels: list[int],
    hidden: int,
    act: Any = "relu",
) -> nn.Module:
    """3x3 same convolutions, each followed by the activation and a 2x2 max-pool, then one hidden
    dense layer (8x8 digits with channels 8, 16 and 32 hidden units: 3,658 parameters)."""
    layers: list[nn.Module] = []
    in_channels = input_shape[0]
    for width in channels:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), activation(act), nn.MaxPool2d(2)]
        in_channels = width
    features = nn.Sequential(*layers, nn.Flatten())
    flat = _flat_size(features, input_shape, "digits_cnn")
    return nn.Sequential(
        *features, nn.Linear(flat, hidden), activation(act), nn.Linear(hidden, outputs)
    )


def allcnnc(
    input_shape: tuple[int, int, int], outputs: int, act: Any = "relu", dropout: bool = False
) -> nn.Module:
    """All-CNN-C: three blocks of 3x3 convolutions (96, 96, 96/2; 192, 192, 192/2; 192 valid,
    192 1x1, outputs 1x1) and global average pooling."""

    def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 1) -> list:
        return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding), activation(act)]

    layers: list[nn.Module] = [nn.Dropout(0.2)] if dropout else []
    layers += conv(input_shape[0], 96, 3) + conv(96, 96, 3) + conv(96, 96, 3, stride=2)
    layers += [nn.Dropout(0.5)] if dropout else []
    layers += conv(96, 192, 3) + conv(192, 192, 3) + conv(192, 192, 3, stride=2)
    layers += [nn.Dropout(0.5)] if dropout else []
    layers += conv(192, 192, 3, padding=0) + conv(192, 192, 1, padding=0)
    layers += conv(192, outputs, 1, padding=0)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    _flat_size(model, input_shape, "allcnnc")
    return model


class PositionEmbedding(nn.Module):
    """A learned vector per position, added to the token embeddings."""

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.02 * torch.randn(1, length, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight[:, : x.shape[1]]


class TransformerClassifier(nn.Module):
    """Token and position embeddings, pre-norm encoder layers (GELU), final LayerNorm, mean over
    positions, linear head."""

    def __init__(
        self,
        vocab_size: int,
        length: int,
        outputs: int,
        dim: int = 32,
        heads: int = 4,
        layers: int = 2,
        feedforward: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.position = PositionEmbedding(length, dim)
        self.encoder = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    dim, heads, feedforward, dropout, "gelu", batch_first=True, norm_first=True
                )
                for _ in range(layers)
            )
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, outputs)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = self.norm(self.encoder(self.position(self.embedding(tokens))))
        return self.head(hidden.mean(1))


# ------------------------------------------------------------- builders of the schemas
def mlp_for(info: DataInfo, *, hidden: Sequence[int], activation: Any) -> nn.Module:
    """:func:`mlp` on the flattened inputs of ``info``."""
    return mlp(_vector_input(info, "mlp"), info.num_outputs, list(hidden), activation)


def logreg_for(info: DataInfo) -> nn.Module:
    """:func:`logreg` on the flattened inputs of ``info``."""
    return logreg(_vector_input(info, "logreg"), info.num_outputs)


def c3d3_for(info: DataInfo, *, activation: Any) -> nn.Module:
    """:func:`c3d3` on the images of ``info``."""
    return c3d3(_image_shape(info, "3c3d"), info.num_outputs, activation)


def digits_cnn_for(
    info: DataInfo, *, channels: Sequence[int], hidden: int, activation: Any
) -> nn.Module:
    """:func:`digits_cnn` on the images of ``info``."""
    return digits_cnn(
        _image_shape(info, "digits_cnn"), info.num_outputs, list(channels), hidden, activation
    )


def allcnnc_for(info: DataInfo, *, activation: Any, dropout: bool) -> nn.Module:
    """:func:`allcnnc` on the images of ``info``."""
    return allcnnc(_image_shape(info, "allcnnc"), info.num_outputs, activation, dropout)


def transformer_for(
    info: DataInfo, *, dim: int, heads: int, layers: int, feedforward: int, dropout: float
) -> nn.Module:
    """:class:`TransformerClassifier` on the token sequences of ``info``."""
    if info.vocab_size is None or len(info.input_shape) != 1:
        raise ConfigError(
            f"model transformer needs token sequences (data=sequence), got inputs of shape "
            f"{info.input_shape}"
        )
    if dim % heads:
        raise ConfigError(f"model.dim={dim} must be a multiple of model.heads={heads}")
    return TransformerClassifier(
        info.vocab_size,
        info.input_shape[0],
        info.num_outputs,
        dim,
        heads,
        layers,
        feedforward,
        dropout,
    )


def build_model(cfg: Any, info: DataInfo) -> nn.Module:
    """The model of a ``model`` config (a config, dict or schema instance; its ``_target_`` and
    fields) for data described by ``info``."""
    return builder("model", cfg)(info)
