"""The model zoo: output shapes, parameter counts, activations, and clear errors for a model
that does not fit the data."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cockpit_optim import MonitoredOptimizer, ReadingWarning
from cockpit_optim.experiment import ConfigError, DataInfo, build_model, num_parameters
from cockpit_optim.experiment.models import PARAMS_3C3D, PARAMS_ALLCNNC_CIFAR100, activation

CIFAR10 = DataInfo((3, 32, 32), 10, "classification")
CIFAR100 = DataInfo((3, 32, 32), 100, "classification")
MNIST = DataInfo((1, 28, 28), 10, "classification")
DIGITS = DataInfo((1, 8, 8), 10, "classification")
SEQUENCE = DataInfo((12,), 5, "classification", vocab_size=7)

MODELS = {
    "mlp": {"hidden": [256], "activation": "relu"},
    "logreg": {},
    "3c3d": {"activation": "relu"},
    "digits_cnn": {"channels": [8, 16], "hidden": 32, "activation": "relu"},
    "allcnnc": {"activation": "relu", "dropout": False},
    "transformer": {"dim": 16, "heads": 2, "layers": 2, "feedforward": 32, "dropout": 0.0},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast as two and immune to a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model(name: str, info: DataInfo, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"name": name, **MODELS[name], **options}, info)


@pytest.mark.parametrize(
    ("name", "info", "parameters"),
    [
        ("3c3d", CIFAR10, PARAMS_3C3D),
        ("allcnnc", CIFAR100, PARAMS_ALLCNNC_CIFAR100),
        ("mlp", MNIST, 203_530),
        ("logreg", MNIST, 7_850),
        ("digits_cnn", DIGITS, 3_658),
        ("3c3d", MNIST, None),
        ("mlp", DIGITS, None),
    ],
)
def test_shapes_and_parameter_counts(name, info, parameters):
    net = model(name, info)
    if parameters is not None:
        assert num_parameters(net) == parameters
    with torch.no_grad():
        assert net(torch.randn(3, *info.input_shape)).shape == (3, info.num_outputs)


def test_3c3d_parameter_count_follows_from_its_layers():
    """DeepOBS's count, derived from the architecture: 32 -> conv 5x5 valid 28 -> pool 14 ->
    conv 3x3 valid 12 -> pool 6 -> conv 3x3 same 6 -> pool 3, so 128 * 3 * 3 flat features."""
    convolutions = (3 * 25 + 1) * 64 + (64 * 9 + 1) * 96 + (96 * 9 + 1) * 128
    dense = (128 * 9 + 1) * 512 + (512 + 1) * 256 + (256 + 1) * 10
    assert convolutions + dense == 895_210
    net = model("3c3d", CIFAR10)
    assert num_parameters(net) == PARAMS_3C3D == convolutions + dense
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert shapes == [
        (64, 3, 5, 5),
        (96, 64, 3, 3),
        (128, 96, 3, 3),
        (512, 1152),
        (256, 512),
        (10, 256),
    ]


def test_transformer_on_token_sequences():
    net = model("transformer", SEQUENCE)
    tokens = torch.randint(0, 7, (4, 12))
    assert net(tokens).shape == (4, 5)
    assert isinstance(net.embedding, nn.Embedding) and net.position.weight.shape == (1, 12, 16)
    assert sum(isinstance(m, nn.MultiheadAttention) for m in net.modules()) == 2


def test_transformer_trains_with_instruments_that_need_no_individual_gradients():
    net, loss_fn = model("transformer", SEQUENCE), nn.CrossEntropyLoss()
    instruments = ["Loss", "GradNorm", "Distance", "UpdateSize", "Time"]
    opt = MonitoredOptimizer(torch.optim.Adam(net.parameters(), lr=3e-3), net, loss_fn, instruments)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (32, 12), generator=gen)
    labels = torch.randint(0, 5, (32,), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReadingWarning)
        for _ in range(15):
            opt.zero_grad()
            loss_fn(net(tokens), labels).backward()
            opt.step()
    losses = [r["Loss"] for r in opt.history]
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert all(r["GradNorm"] > 0 and r["UpdateSize"] > 0 for r in opt.history)


def test_activation_variants_differ_only_in_the_nonlinearity():
    relu, sigmoid = model("3c3d", CIFAR10), model("3c3d", CIFAR10, activation="sigmoid")
    kinds = [type(m) for m in relu], [type(m) for m in sigmoid]
    assert [k for k in kinds[0] if k is not nn.ReLU] == [k for k in kinds[1] if k is not nn.Sigmoid]
    assert kinds[0].count(nn.ReLU) == kinds[1].count(nn.Sigmoid) == 5
    assert num_parameters(relu) == num_parameters(sigmoid)


def test_allcnnc_dropout_option():
    net = model("allcnnc", CIFAR10, dropout=True)
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.2, 0.5, 0.5]


@pytest.mark.parametrize(
    ("name", "info", "message"),
    [
        ("3c3d", DIGITS, "3c3d cannot take inputs of shape \\(1, 8, 8\\)"),
        ("digits_cnn", SEQUENCE, "needs images"),
        ("mlp", SEQUENCE, "use transformer"),
        ("transformer", DIGITS, "needs token sequences"),
    ],
)
def test_model_that_does_not_fit_the_data(name, info, message):
    with pytest.raises(ConfigError, match=message):
        model(name, info)


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match=r"resnet.*3c3d, allcnnc"):
        build_model({"name": "resnet"}, DIGITS)
    with pytest.raises(ConfigError, match=r"swish.*relu, sigmoid"):
        model("mlp", DIGITS, activation="swish")
    with pytest.raises(ConfigError, match=r"swish.*relu, sigmoid"):
        activation("swish")
    with pytest.raises(ConfigError, match=r"model: Key 'widths' not in 'MLPConfig'"):
        model("mlp", DIGITS, widths=[8])
    with pytest.raises(ConfigError, match=r"multiple of model.heads"):
        model("transformer", SEQUENCE, dim=15, heads=2)


def test_a_model_config_may_name_another_builder():
    """``_target_`` selects the builder: any callable taking the data info and the fields."""
    net = build_model({"name": "logreg", "_target_": "torch.nn.Identity"}, DIGITS)
    assert isinstance(net, nn.Identity)
    with pytest.raises(ConfigError, match=r"model\._target_='torch\.nn\.Resnet'.*importable"):
        build_model({"name": "logreg", "_target_": "torch.nn.Resnet"}, DIGITS)
