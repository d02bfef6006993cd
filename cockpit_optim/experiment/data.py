"""Data sets of the experiments, held in memory as tensors.

``digits`` (scikit-learn's bundled 8x8 digits), ``noisy_quadratic``, ``synthetic`` and
``sequence`` are generated on the fly; ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100``
are read by torchvision from a local folder and are never downloaded.  Images are stored as loaded
(e.g. ``uint8``) and scaled per batch by :meth:`Data.batch`.  Each data schema names its loader
in ``_target_``: the function of its name, taking the schema's own fields as keywords.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import ConfigError, builder, group_config

__all__ = [
    "TRAINER_FIELDS",
    "Data",
    "DataInfo",
    "DataNotFoundError",
    "Split",
    "cifar10",
    "cifar100",
    "digits",
    "expected_files",
    "fashion_mnist",
    "load_data",
    "mnist",
    "noisy_quadratic",
    "sequence",
    "synthetic",
    "torchvision_data",
]

#: Fields of every data config that the trainer reads (not its loader's keywords).
TRAINER_FIELDS = ("batch_size", "eval_batch_size", "train_subset")


class DataNotFoundError(FileNotFoundError):
    """A torchvision data set is missing from ``data.data_dir``; the message says how to get it."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its inputs and outputs."""

    input_shape: tuple[int, ...]
    num_outputs: int
    task: str  # "classification" (integer labels) or "regression" (float targets)
    vocab_size: int | None = None  # inputs are token ids in [0, vocab_size)


@dataclass
class Split:
    """Inputs (as stored) and targets of one split."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all for ``None``)."""
        return self if n is None else Split(self.inputs[:n], self.targets[:n])


@dataclass
class Data:
    """Train and test split; model inputs are ``(stored - offset) / divisor`` when scaled."""

    train: Split
    test: Split
    info: DataInfo
    offset: Tensor | None = None
    divisor: Tensor | None = None

    def batch(self, split: Split, indices: Sequence[int] | slice) -> tuple[Tensor, Tensor]:
        """Model inputs and targets of ``split[indices]``."""
        inputs = split.inputs[indices]
        if self.offset is not None:
            inputs = (inputs.to(torch.float32) - self.offset) / self.divisor
        return inputs, split.targets[indices]

    def loss_fn(self) -> nn.Module:
        """Cross-entropy for classification, mean squared error for regression."""
        return nn.CrossEntropyLoss() if self.info.task == "classification" else nn.MSELoss()


def _scaled(train: Split, test: Split, info: DataInfo, scaling: Any, maximum: float) -> Data:
    """Images ``[N, C, H, W]`` with the affine of ``scaling``: raw values, ``/ maximum``, or per-channel
    standardization with the training split's mean and standard deviation."""
    scaling = str(getattr(scaling, "value", scaling))
    channels = train.inputs.shape[1]
    if scaling == "raw":
        offset, divisor = torch.zeros(channels), torch.ones(channels)
    elif scaling == "unit":
        offset, divisor = torch.zeros(channels), torch.full((channels,), float(maximum))
    elif scaling == "standard":
        pixels = train.inputs.to(torch.float64).transpose(0, 1).reshape(channels, -1)
        offset, divisor = pixels.mean(1), pixels.std(1).clamp_min(1e-12)
    else:
        raise ConfigError(f"unknown scaling {scaling!r}; choose raw, unit or standard")
    shape = (channels, 1, 1)
    return Data(train, test, info, offset.float().view(shape), divisor.float().view(shape))


def _standardized(features: np.ndarray, train_size: int) -> Tensor:
    mean = features[:train_size].mean(0)
    std = features[:train_size].std(0) + 1e-12
    return torch.tensor((features - mean) / std, dtype=torch.float32)


# ------------------------------------------------------------------------------ generated
def digits(*, scaling: Any, test_fraction: float, seed: int) -> Data:
    """scikit-learn's 8x8 digits (pixel values 0..16), split at random by ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_test = round(test_fraction * len(labels))
    if not 0 < n_test < len(labels):
        raise ConfigError(f"data.test_fraction={test_fraction} leaves an empty split")
    test, train = order[:n_test], order[n_test:]
    info = DataInfo((1, 8, 8), 10, "classification")
    return _scaled(
        Split(images[train], labels[train]),
        Split(images[test], labels[test]),
        info,
        scaling,
        16,
    )


def noisy_quadratic(*, dim: int, train_size: int, test_size: int, noise: float, seed: int) -> Data:
    """Least squares ``l_n = (w.x_n - y_n)^2``, a stochastic quadratic in ``w`` with Hessian
    ``2 E[x x^T]``.  The covariance has a DeepOBS-like spectrum: a tenth of its eigenvalues in
    ``[0.5, 1]``, the rest in ``[0, 1/60]``, in a random basis; ``y = w*.x + noise * eps``."""
    gen = torch.Generator().manual_seed(seed)
    n = train_size + test_size
    large = max(1, dim // 10)
    eigenvalues = torch.cat(
        [0.5 + 0.5 * torch.rand(large, generator=gen), torch.rand(dim - large, generator=gen) / 60]
    )
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    inputs = (
        torch.randn(n, dim, generator=gen, dtype=torch.float64) * eigenvalues.sqrt()
    ) @ basis.T
    optimum = torch.randn(dim, generator=gen, dtype=torch.float64)
    errors = noise * torch.randn(n, generator=gen, dtype=torch.float64)
    targets = (inputs @ optimum + errors).unsqueeze(1)
    inputs, targets = inputs.float(), targets.float()
    t = train_size
    info = DataInfo((dim,), 1, "regression")
    return Data(Split(inputs[:t], targets[:t]), Split(inputs[t:], targets[t:]), info)


def synthetic(
    *,
    features: int,
    informative: int,
    classes: int,
    class_sep: float,
    train_size: int,
    test_size: int,
    seed: int,
) -> Data:
    """Gaussian clusters (``make_classification``), features standardized on the training split."""
    from sklearn.datasets import make_classification

    values, labels = make_classification(
        n_samples=train_size + test_size,
        n_features=features,
        n_informative=informative,
        n_redundant=0,
        n_classes=classes,
        class_sep=class_sep,
        random_state=seed,
    )
    inputs = _standardized(values, train_size)
    targets = torch.tensor(labels, dtype=torch.long)
    t = train_size
    info = DataInfo((features,), classes, "classification")
    return Data(Split(inputs[:t], targets[:t]), Split(inputs[t:], targets[t:]), info)


def sequence(*, vocab_size: int, length: int, train_size: int, test_size: int, seed: int) -> Data:
    """Random token sequences with a planted token repeated at a quarter of the positions; the
    label is the most frequent token (the smallest one on ties)."""
    gen = torch.Generator().manual_seed(seed)
    n, vocab = train_size + test_size, vocab_size
    tokens = torch.randint(0, vocab, (n, length), generator=gen)
    planted = torch.randint(0, vocab, (n, 1), generator=gen)
    positions = torch.rand(n, length, generator=gen).argsort(1)[:, : math.ceil(length / 4)]
    tokens.scatter_(1, positions, planted.expand_as(positions))
    labels = nn.functional.one_hot(tokens, vocab).sum(1).argmax(1)
    t = train_size
    info = DataInfo((length,), vocab, "classification", vocab_size=vocab)
    return Data(Split(tokens[:t], labels[:t]), Split(tokens[t:], labels[t:]), info)


# ---------------------------------------------------------------------------- torchvision
# data set name -> (torchvision class name, number of classes)
TORCHVISION = {
    "mnist": ("MNIST", 10),
    "fashion_mnist": ("FashionMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
}


def _torchvision_class(name: str) -> type:
    try:
        import torchvision.datasets
    except ImportError as error:
        raise ConfigError(
            f"data={name} reads its files with torchvision: pip install torchvision"
        ) from error
    return getattr(torchvision.datasets, TORCHVISION[name][0])


def expected_files(name: str, root: str | os.PathLike) -> list[Path]:
    """The files torchvision reads for data set ``name`` under ``root`` (both splits)."""
    cls = _torchvision_class(name)
    if hasattr(cls, "base_folder"):  # CIFAR: pickled batches
        folder = Path(root) / cls.base_folder
        names = [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    else:  # MNIST family: uncompressed idx files in <root>/<class>/raw
        folder = Path(root) / cls.__name__ / "raw"
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    return [folder / file for file in names]


def _not_found(name: str, root: Path, problem: str) -> DataNotFoundError:
    cls_name = TORCHVISION[name][0]
    return DataNotFoundError(
        f"data set {name} not found in data.data_dir={str(root)!r}: {problem}. Experiments never "
        f'download; get it once with\n  python -c "from torchvision.datasets import {cls_name}; '
        f"{cls_name}('{root}', train=True, download=True)\"\nor set data.data_dir to the folder "
        f"that holds {expected_files(name, root)[0].parent.relative_to(root)}/."
    )


def torchvision_data(name: str, data_dir: str, scaling: Any) -> Data:
    """Torchvision data set ``name`` (a key of :data:`TORCHVISION`) from ``data_dir``
    (``download=False``)."""
    root = Path(data_dir).expanduser().resolve()
    missing = [str(p) for p in expected_files(name, root) if not p.is_file()]
    if missing:
        raise _not_found(name, root, "missing " + ", ".join(missing))
    cls = _torchvision_class(name)
    splits = []
    for train in (True, False):
        try:
            dataset = cls(str(root), train=train, download=False)
        except RuntimeError as error:  # corrupted files (torchvision's checksums)
            raise _not_found(name, root, str(error)) from error
        inputs = torch.as_tensor(np.asarray(dataset.data))
        inputs = inputs.unsqueeze(1) if inputs.ndim == 3 else inputs.permute(0, 3, 1, 2)
        splits.append(Split(inputs.contiguous(), torch.as_tensor(dataset.targets).long()))
    info = DataInfo(tuple(splits[0].inputs.shape[1:]), TORCHVISION[name][1], "classification")
    return _scaled(splits[0], splits[1], info, scaling, 255)


def mnist(*, data_dir: str, scaling: Any) -> Data:
    """MNIST (28x28 grey digits, 60,000 training and 10,000 test images)."""
    return torchvision_data("mnist", data_dir, scaling)


def fashion_mnist(*, data_dir: str, scaling: Any) -> Data:
    """Fashion-MNIST (28x28 grey clothing images, 60,000 training and 10,000 test images)."""
    return torchvision_data("fashion_mnist", data_dir, scaling)


def cifar10(*, data_dir: str, scaling: Any) -> Data:
    """CIFAR-10 (32x32 colour images of 10 classes, 50,000 training and 10,000 test images)."""
    return torchvision_data("cifar10", data_dir, scaling)


def cifar100(*, data_dir: str, scaling: Any) -> Data:
    """CIFAR-100 (32x32 colour images of 100 classes, 50,000 training and 10,000 test images)."""
    return torchvision_data("cifar100", data_dir, scaling)


def load_data(cfg: Any) -> Data:
    """The data set of a ``data`` config (a config, dict or schema instance; its ``_target_`` and
    fields), cut to ``train_subset`` examples."""
    cfg = group_config("data", cfg, resolve=True)
    data = builder("data", cfg, exclude=TRAINER_FIELDS)()
    data.train = data.train.head(cfg.train_subset)
    return data
