"""Data sets of the experiments: generated sets, scaling, and the torchvision loaders on small
files written in torchvision's on-disk formats."""

from __future__ import annotations

import importlib.util
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cockpit_optim.experiment import ConfigError, DataNotFoundError, load_data
from cockpit_optim.experiment.data import expected_files


def cfg(name: str, **options) -> dict:
    """A ``data`` config: the schema of ``name`` fills in the other fields."""
    return {"name": name, **options}


def digits_cfg(**options) -> dict:
    return cfg("digits", **{"test_fraction": 0.2, **options})


# ------------------------------------------------------------------------------ generated
def test_digits_split_and_scalings():
    raw = load_data(digits_cfg(scaling="raw"))
    assert (len(raw.train), len(raw.test)) == (1438, 359)
    assert raw.info.input_shape == (1, 8, 8) and raw.info.num_outputs == 10
    x, y = raw.batch(raw.train, slice(None))
    assert x.dtype == torch.float32 and float(x.max()) == 16.0 and float(x.min()) == 0.0
    assert set(y.tolist()) == set(range(10))
    unit = load_data(digits_cfg(scaling="unit"))
    assert torch.equal(unit.batch(unit.train, slice(None))[0], x / 16)
    standard = load_data(digits_cfg(scaling="standard"))
    xs = standard.batch(standard.train, slice(None))[0].double()
    assert abs(float(xs.mean())) < 1e-5 and abs(float(xs.std()) - 1) < 1e-3


def test_digits_split_depends_on_the_seed_only():
    a, b, c = (load_data(digits_cfg(seed=s)) for s in (0, 0, 1))
    assert torch.equal(a.train.targets, b.train.targets)
    assert not torch.equal(a.train.targets, c.train.targets)
    pairs = {tuple(img.flatten().tolist()) for img in torch.cat([a.train.inputs, a.test.inputs])}
    assert len(a.train) + len(a.test) == 1797 and len(pairs) > 1700


def test_train_subset_cuts_the_training_split_only():
    data = load_data(digits_cfg(train_subset=100))
    assert (len(data.train), len(data.test)) == (100, 359)


def test_noisy_quadratic_is_least_squares_with_the_chosen_noise():
    data = load_data(
        cfg("noisy_quadratic", dim=20, train_size=4000, test_size=100, noise=0.5, seed=3)
    )
    assert data.info.task == "regression" and data.info.input_shape == (20,)
    assert data.loss_fn().__class__.__name__ == "MSELoss"
    x, y = data.batch(data.train, slice(None))
    assert y.shape == (4000, 1)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution
    residual = float(((x.double() @ solution - y) ** 2).mean())
    assert residual == pytest.approx(0.25, rel=0.1)  # noise^2
    eigenvalues = torch.linalg.eigvalsh(x.double().T @ x.double() / len(x))
    assert float(eigenvalues[-1]) < 1.2 and float(eigenvalues[-3]) < 0.05  # 2 large, 18 small


def test_synthetic_classification_is_standardized():
    data = load_data(
        cfg(
            "synthetic",
            features=6,
            informative=4,
            classes=3,
            class_sep=1.0,
            train_size=300,
            test_size=50,
        )
    )
    x, y = data.batch(data.train, slice(None))
    assert x.shape == (300, 6) and set(y.tolist()) == {0, 1, 2}
    assert float(x.mean(0).abs().max()) < 1e-5
    assert len(data.test) == 50


def test_sequence_labels_are_the_most_frequent_token():
    data = load_data(cfg("sequence", vocab_size=5, length=12, train_size=500, test_size=20))
    x, y = data.batch(data.train, slice(None))
    assert x.dtype == torch.long and x.shape == (500, 12) and data.info.vocab_size == 5
    counts = torch.stack([(x == v).sum(1) for v in range(5)], 1)
    assert torch.equal(counts.max(1).values, counts.gather(1, y[:, None]).squeeze(1))
    assert bool((counts.max(1).values >= 3).all())  # a quarter of 12 positions is planted
    assert set(y.tolist()) == set(range(5))


def test_unknown_name_and_bad_split_fail_clearly():
    with pytest.raises(ConfigError, match=r"imagenet.*cifar10"):
        load_data(cfg("imagenet"))
    with pytest.raises(ConfigError, match="test_fraction"):
        load_data(digits_cfg(test_fraction=0.0))


# ---------------------------------------------------------------------------- torchvision
needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed"
)


def _idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file (big-endian magic: two zero bytes, type 0x08, dimensions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist(root: Path, folder: str, n_train: int = 12, n_test: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    raw = root / folder / "raw"
    _idx(raw / "train-images-idx3-ubyte", images)
    _idx(raw / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    _idx(raw / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)
    return images


def _pickle(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def _cifar(root: Path, hundred: bool, per_file: int = 4) -> np.ndarray:
    """CIFAR pickles: rows of 3072 bytes (the red, green and blue 32x32 planes)."""
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
    if hundred:
        folder, key = root / "cifar-100-python", "fine_labels"
        _pickle(folder / "train", {"data": rows, key: [1, 2, 3, 99]})
        _pickle(folder / "test", {"data": rows[:2], key: [0, 5]})
        _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    else:
        folder, key = root / "cifar-10-batches-py", "labels"
        for i in range(1, 6):
            _pickle(folder / f"data_batch_{i}", {"data": rows, key: [0, 1, 2, 9]})
        _pickle(folder / "test_batch", {"data": rows[:2], key: [3, 4]})
        _pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return rows


@pytest.fixture
def no_checksums(monkeypatch):
    """torchvision checks the CIFAR files' MD5 sums; generated files keep only the layout."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path)
    )


@needs_torchvision
@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    images = _mnist(tmp_path, folder)
    data = load_data(cfg(name, data_dir=str(tmp_path), scaling="raw"))
    assert data.info.input_shape == (1, 28, 28) and data.info.num_outputs == 10
    assert (len(data.train), len(data.test)) == (12, 5)
    x, y = data.batch(data.train, [3, 7])
    assert torch.equal(x[:, 0], torch.tensor(images[[3, 7]], dtype=torch.float32))
    assert y.tolist() == [3, 7]
    unit = load_data(cfg(name, data_dir=str(tmp_path), scaling="unit"))
    assert torch.allclose(unit.batch(unit.train, [3])[0], x[:1] / 255)


@needs_torchvision
@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_from_pickled_batches(tmp_path, no_checksums, hundred):
    rows = _cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    data = load_data(cfg(name, data_dir=str(tmp_path), scaling="raw"))
    assert data.info.input_shape == (3, 32, 32)
    assert data.info.num_outputs == (100 if hundred else 10)
    assert len(data.train) == (4 if hundred else 20) and len(data.test) == 2
    x, y = data.batch(data.train, [1])
    assert torch.equal(x[0], torch.tensor(rows[1].reshape(3, 32, 32), dtype=torch.float32))
    assert y.tolist() == [2 if hundred else 1]
    standard = load_data(cfg(name, data_dir=str(tmp_path), scaling="standard"))
    xs = standard.batch(standard.train, slice(None))[0]
    assert float(xs.mean((0, 2, 3)).abs().max()) < 1e-4


@needs_torchvision
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_folder_says_how_to_get_the_data(tmp_path, name):
    with pytest.raises(DataNotFoundError) as error:
        load_data(cfg(name, data_dir=str(tmp_path / "nowhere")))
    message = str(error.value)
    assert "download=True" in message and "data.data_dir" in message
    assert str(expected_files(name, tmp_path / "nowhere")[0]) in message


@needs_torchvision
def test_one_missing_file_is_named(tmp_path):
    _mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing [^,]*t10k-labels-idx1-ubyte\."):
        load_data(cfg("mnist", data_dir=str(tmp_path)))


@needs_torchvision
def test_corrupted_cifar_files_fail_with_the_same_advice(tmp_path):
    _cifar(tmp_path, hundred=False)  # present, but the checksums do not match
    with pytest.raises(DataNotFoundError, match=r"corrupted.*download=True"):
        load_data(cfg("cifar10", data_dir=str(tmp_path)))
