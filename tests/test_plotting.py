"""The cockpit view, the layer-wise view, live mode and the animation (cockpit_optim.plotting)."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.patches import Circle, Rectangle
from models import make_problem
from PIL import Image

from cockpit_optim import MonitoredOptimizer, ReadingWarning, load_log
from cockpit_optim.log import LogWriter
from cockpit_optim.plotting import LivePlot, animate, plot, plot_layerwise
from cockpit_optim.plotting.cockpit import draw_cockpit
from cockpit_optim.plotting.gauges import ALPHA_LIMIT
from cockpit_optim.plotting.panels import View, new_figure, smoothed

animate_module = importlib.import_module("cockpit_optim.plotting.animate")

PANELS = [
    "Alpha",
    "Distance",
    "UpdateSize",
    "GradNorm",
    "GradientTests",
    "GradientTests history",
    "GradHist1d",
    "GradHist2d",
    "HessMaxEV",
    "HessTrace",
    "TICDiag",
    "TICTrace",
    "HyperParameters",
    "Performance",
]
TITLES = ["Alpha", "Distance & UpdateSize", "GradNorm", "Gradient tests", "GradHist1d"]
TITLES += ["GradHist2d", "HessMaxEV", "HessTrace", "TICDiag & TICTrace", "Hyper-parameters"]
TITLES += ["Performance"]
NOT_TRACKED = {
    "economy": {"GradHist2d", "HessMaxEV", "HessTrace", "TICDiag", "TICTrace"},
    "business": {"GradHist2d", "HessMaxEV"},
    "full": set(),
}


class HalveLR:
    """A minimal controller: halves the learning rate once, at step 3."""

    instruments = ("Loss",)

    def observe(self, record, optimizer):
        if record["step"] != 3:
            return []
        lr = optimizer.param_groups[0]["lr"]
        optimizer.param_groups[0]["lr"] = lr / 2
        return [{"controller": "HalveLR", "what": "lr", "from": lr, "to": lr / 2, "why": "test"}]


def _train(
    log_dir, instruments="full", steps=8, controllers=(), batch_sizes=None
) -> MonitoredOptimizer:
    model, loss_fn, batch = make_problem("mlp")
    opt = MonitoredOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model,
        loss_fn,
        instruments=instruments,
        log_dir=log_dir,
        controllers=controllers,
    )
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReadingWarning)
        for step in range(steps):
            x, y = batch(gen, batch_sizes[step] if batch_sizes else 12)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    return opt


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Logs of real short runs: the three configurations, one with a controller and one whose
    batch of size 1 makes the gradient tests nan."""
    root = tmp_path_factory.mktemp("runs")
    for name in NOT_TRACKED:
        _train(root / name, instruments=name)
    _train(root / "controlled", instruments="economy", controllers=[HalveLR()])
    _train(root / "nan", instruments="economy", batch_sizes=[12, 12, 1, 12, 1, 12, 12, 12])
    return {path.name: path for path in root.iterdir()}


def by_label(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label()}


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def messages(fig) -> dict[str, str]:
    return {
        ax.get_label(): t.get_text()
        for ax in fig.axes
        for t in ax.texts
        if t.get_gid() == "message"
    }


def titles(fig) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]


def synthetic(alphas=(), n=None, **extra) -> list[dict]:
    """Small records in the record format (only the keys given)."""
    n = n if n is not None else len(alphas)
    records = [{"step": 2 * i, "Loss": 1.0 / (i + 1), "lr": 0.1, "batch_size": 8} for i in range(n)]
    for record, alpha in zip(records, alphas):
        record["Alpha"] = alpha
    for key, values in extra.items():
        for record, value in zip(records, values):
            record[key] = value
    return records


@pytest.mark.parametrize("config", ["economy", "business", "full"])
def test_cockpit_has_every_panel_and_marks_missing_instruments(runs, config, tmp_path):
    fig = plot(runs[config], tmp_path / "cockpit.png")
    assert set(PANELS) <= set(by_label(fig))
    assert set(TITLES) <= set(titles(fig))
    missing = {label for label, text in messages(fig).items() if "not tracked" in text}
    assert missing == NOT_TRACKED[config]
    with Image.open(tmp_path / "cockpit.png") as image:
        assert image.format == "PNG" and image.size == (1600, 1200)


def test_histogram_bars_are_the_newest_counts(runs):
    records = load_log(runs["full"])
    hist = records[-1]["GradHist1d"]
    ax = by_label(plot(records))["GradHist1d"]
    heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
    assert heights == [c for c in hist["counts"] if c > 0]  # empty bins: no bar on a log axis
    assert ax.get_xlim() == (hist["edges"][0], hist["edges"][-1])
    shown = {t.get_gid(): t.get_text() for t in ax.texts}
    for side in ("underflow", "overflow"):
        if hist[side]:
            assert f"{hist[side]:,}" in shown[side]
        else:
            assert side not in shown


def test_underflow_and_overflow_are_annotated():
    records = synthetic(n=1)
    records[0]["GradHist1d"] = {
        "edges": [-1.0, 0.0, 1.0],
        "counts": [5, 7],
        "underflow": 1234,
        "overflow": 2,
        "binned": 1248,
        "population": 2496,
    }
    ax = by_label(plot(records))["GradHist1d"]
    shown = " ".join(texts(ax))
    assert "1,234 below" in shown and "2 above" in shown and "subsample" in shown


def test_hist2d_heat_map_and_marginals(runs):
    records = load_log(runs["full"])
    hist = records[-1]["GradHist2d"]
    axes = by_label(plot(records))
    mesh = axes["GradHist2d"].collections[0]
    np.testing.assert_array_equal(np.ma.filled(mesh.get_array(), 0), np.asarray(hist["counts"]))
    top = [p.get_height() for p in axes["GradHist2d gradient marginal"].patches]
    side = [p.get_width() for p in axes["GradHist2d parameter marginal"].patches]
    np.testing.assert_array_equal(top, np.sum(hist["counts"], axis=0))
    np.testing.assert_array_equal(side, np.sum(hist["counts"], axis=1))


def test_gradient_test_shapes_show_the_newest_radii(runs):
    records = load_log(runs["economy"])
    newest = records[-1]
    ax = by_label(plot(records))["GradientTests"]
    circles = [p for p in ax.patches if isinstance(p, Circle)]
    assert circles and all(c.get_radius() == pytest.approx(newest["NormTest"]) for c in circles)
    bands = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert any(b.get_x() == pytest.approx(1 - newest["InnerTest"]) for b in bands)
    assert any(b.get_y() == pytest.approx(-newest["OrthoTest"]) for b in bands)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    box = ax.get_position()
    fig = ax.figure
    ratio = (box.height * fig.get_figheight()) / (box.width * fig.get_figwidth())
    assert (y1 - y0) / (x1 - x0) == pytest.approx(ratio)  # equal units: the ball is round


def test_alpha_marks_readings_beyond_the_axis():
    alphas = [-4.0, -2.0, -1.0, 0.0, 0.2, 0.4, 1.0, 2.0, 3.0, 9.0]
    fig = plot(synthetic(alphas), last_fraction=0.3)
    ax = by_label(fig)["Alpha"]
    marks = {t.get_gid(): int(t.get_text().strip("◀▶ ")) for t in ax.texts}
    recent = alphas[-3:]
    assert marks["alpha-all-below"] == sum(a < -ALPHA_LIMIT for a in alphas)
    assert marks["alpha-all-above"] == sum(a > ALPHA_LIMIT for a in alphas)
    assert marks["alpha-last-above"] == sum(a > ALPHA_LIMIT for a in recent)
    assert "alpha-last-below" not in marks
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        f"all 10 · mean {np.mean(alphas):.2f}",
        f"last 30% (3) · mean {np.mean(recent):.2f}",
    ]
    heights = [p.get_height() for p in ax.patches]
    inside = [a for a in alphas if abs(a) <= ALPHA_LIMIT]
    assert sum(heights[: len(heights) // 2]) == pytest.approx(len(inside) / len(alphas))


def test_nan_readings_are_skipped(runs):
    records = load_log(runs["nan"])
    assert any(math.isnan(r["NormTest"]) for r in records)
    axes = by_label(plot(records))
    finite = [r["NormTest"] for r in records if math.isfinite(r["NormTest"])]
    points = axes["GradientTests history"].collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 1], finite)
    loss = [r["Loss"] for r in records]
    np.testing.assert_allclose(axes["Performance"].collections[0].get_offsets()[:, 1], loss)


def test_all_nan_reading_says_so():
    fig = plot(synthetic(n=3, GradNorm=[math.nan] * 3))
    assert messages(fig)["GradNorm"] == "GradNorm: no finite reading"


def test_single_record_and_log_steps(runs):
    records = load_log(runs["full"])[:1]
    fig = plot(records, log_steps=True)
    assert set(PANELS) <= set(by_label(fig))
    assert by_label(fig)["GradNorm"].get_xscale() == "symlog"
    assert by_label(plot(records))["GradNorm"].get_xscale() == "linear"


def test_controller_actions_and_metrics_are_shown(runs):
    records = load_log(runs["controlled"])
    records[-1]["test_accuracy"] = 0.5
    records[-1]["val_loss"] = 1.0
    axes = by_label(plot(records))
    legend = [t.get_text() for t in axes["HyperParameters"].get_legend().get_texts()]
    assert "HalveLR: lr ×1" in legend and "batch size" in legend
    lr = axes["HyperParameters"].get_lines()[0].get_ydata()
    assert lr[0] == 0.1 and lr[-1] == 0.05
    assert " lr→0.05: test" in texts(axes["HyperParameters"])
    fig = axes["Performance"].figure
    performance = [
        t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]
    assert {"test accuracy", "val loss", "mini-batch loss (centred smoothing)"} <= set(performance)


def test_sources_are_equivalent(runs, tmp_path):
    opt = _train(tmp_path / "log", instruments="economy", steps=4)
    folder, file = tmp_path / "log", tmp_path / "log" / "cockpit.jsonl"
    expected = titles(plot(opt))
    for source in (opt.history, folder, str(file)):
        assert titles(plot(source)) == expected
    with pytest.raises(TypeError):
        plot(42)
    with pytest.raises(ValueError, match="no records"):
        plot([])
    with pytest.raises(ValueError, match="not a record"):
        plot([{"Loss": 1.0}])
    with pytest.raises(ValueError, match="last_fraction"):
        plot(opt, last_fraction=0)


def test_truncated_log_plots(runs, tmp_path):
    text = (runs["full"] / "cockpit.jsonl").read_text()
    (tmp_path / "cockpit.jsonl").write_text(text[: len(text) - 40])
    with pytest.warns(UserWarning, match="truncated"):
        fig = plot(tmp_path)
    kept = load_log(runs["full"])[:-1]
    header = " ".join(t.get_text() for t in fig.texts)
    assert f"step {kept[-1]['step']}  ·  {len(kept)} tracked steps" in header


def test_malformed_record_spoils_one_panel_only():
    records = synthetic(n=2, Alpha=[0.1, 0.2])
    records[-1]["GradHist1d"] = {"edges": [0.0, 1.0], "counts": [1, 2, 3]}
    with pytest.warns(UserWarning, match="GradHist1d cannot be drawn"):
        fig = plot(records)
    assert messages(fig)["GradHist1d"].startswith("cannot draw GradHist1d")
    assert "Alpha" not in messages(fig)


def test_layerwise_view_has_one_panel_per_parameter(runs, tmp_path):
    opt = _train(tmp_path, instruments="economy", steps=3)
    layers = opt.history[-1]["GradHist1d"]["layers"]
    fig = plot(opt, tmp_path / "layers.png", layerwise=True)
    assert [ax.get_label() for ax in fig.axes] == [n for n, _ in opt.model.named_parameters()]
    assert list(layers) == [ax.get_label() for ax in fig.axes]
    limits = {ax.get_xlim() for ax in fig.axes}
    assert len(limits) == 1  # one shared value axis
    for ax in fig.axes:
        counts = layers[ax.get_label()]["counts"]
        assert [p.get_height() for p in ax.patches] == [c for c in counts if c > 0]
    with Image.open(tmp_path / "layers.png") as image:
        assert image.format == "PNG" and image.width == 1600
    assert messages(plot_layerwise(synthetic(n=1)))["GradHist1d"] == "GradHist1d not tracked"


def test_no_global_matplotlib_state(runs, tmp_path):
    import matplotlib.pyplot as plt

    def rc_state() -> dict:  # raw values: reading "backend" through rcParams would resolve it
        return {k: dict.__getitem__(matplotlib.rcParams, k) for k in dict.keys(matplotlib.rcParams)}

    rc = rc_state()
    plot(runs["full"], tmp_path / "a.png")
    plot_layerwise(runs["full"], tmp_path / "b.png")
    animate(runs["full"], tmp_path / "c.gif", frames=1, dpi=20)
    assert rc_state() == rc
    assert plt.get_fignums() == []


def test_importing_and_plotting_leave_pyplot_alone():
    code = (
        "import sys, matplotlib; raw = lambda: {k: dict.__getitem__(matplotlib.rcParams, k) "
        "for k in dict.keys(matplotlib.rcParams)}; rc = raw(); "
        "import cockpit_optim.plotting as p; p.plot([{'step': 0, 'Loss': 1.0}]); "
        "assert 'matplotlib.pyplot' not in sys.modules; assert raw() == rc"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_animation_is_a_gif_with_one_frame_per_cut(runs, tmp_path):
    path = animate(runs["economy"], tmp_path / "run.gif", frames=2, dpi=20)
    with Image.open(path) as image:
        assert image.format == "GIF" and image.n_frames == 2
    with pytest.raises(ValueError):
        animate([], tmp_path / "empty.gif")


def test_live_plot_redraws_every_n_records(runs, tmp_path):
    records = load_log(runs["economy"])
    live = LivePlot(tmp_path, every=3, background=False)
    live.update(records[:2])
    assert not (tmp_path / "cockpit.png").exists()
    live.update(records[:3])
    assert live.drawn == 3 and (tmp_path / "cockpit.png").exists()
    live.update(records[:5])
    assert live.drawn == 3
    live.close(records)
    assert live.drawn == len(records)
    with Image.open(tmp_path / "cockpit.png") as image:
        assert image.format == "PNG"
    assert not list(tmp_path.glob("*.tmp.png"))


def test_live_plot_in_background_with_layerwise(runs, tmp_path):
    records = load_log(runs["full"])
    live = LivePlot(tmp_path / "live", every=1, layerwise=True)
    live.update(records)
    live.close()
    assert (tmp_path / "live" / "cockpit.png").exists()
    assert (tmp_path / "live" / "cockpit_layerwise.png").exists()


def test_failing_live_plot_warns_once_and_never_raises(runs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    records = load_log(runs["economy"])
    live = LivePlot(blocker, every=1, background=False)
    with pytest.warns(RuntimeWarning, match="live cockpit plot") as caught:
        for n in range(1, 4):
            live.update(records[:n])
        live.close(records)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_log_record_roundtrip_keeps_plot_inputs(tmp_path):
    """Records written through the log (nan as the JSON token NaN) plot like the in-memory ones."""
    records = synthetic([0.1, math.nan, 0.3])
    writer = LogWriter(tmp_path)
    for record in records:
        writer.write(record)
    line = (tmp_path / "cockpit.jsonl").read_text().splitlines()[1]
    assert '"Alpha": NaN' in line and math.isnan(json.loads(line)["Alpha"])
    legend = by_label(plot(tmp_path))["Alpha"].get_legend().get_texts()
    assert legend[0].get_text() == "all 2 · mean 0.20"


def test_live_plot_as_observer_of_a_real_run(tmp_path):
    live = LivePlot(tmp_path, every=2, background=False)
    opt = _train(tmp_path, instruments="economy", steps=4, controllers=[live])
    assert live.drawn == 2 and (tmp_path / "cockpit.png").exists()
    assert not any("actions" in r for r in opt.history)  # a passive observer
    live.close(opt.history)
    assert live.drawn == len(opt.history)


def test_learning_rate_per_parameter_group():
    records = synthetic(n=3, lr=[[0.1, 0.01], [0.1, 0.01], [0.05, 0.01]])
    ax = by_label(plot(records))["HyperParameters"]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["learning rate (group 0)"] == [0.1, 0.1, 0.05]
    assert lines["learning rate (group 1)"] == [0.01, 0.01, 0.01]


def test_many_actions_are_grouped_by_controller():
    records = synthetic(n=20)
    for record in records[2::2]:
        why = f"reading at step {record['step']}"
        record["actions"] = [
            {"controller": "A", "what": "lr", "from": 0.1, "to": 0.2, "why": why},
            {"controller": "B", "what": "batch_size", "from": 8, "to": 16, "why": why},
        ]
    ax = by_label(plot(records))["HyperParameters"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[2:] == [
        "A: lr ×9, newest (step 36): reading at step 36",
        "B: batch_size ×9, newest (step 36): reading at step 36",
    ]
    assert not [t for t in ax.texts if t.get_gid() == "action"]  # too many to write beside
    markers = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert [len(line.get_xdata()) for line in markers] == [9, 9]


def test_noise_scale_panel_appears_only_when_tracked():
    records = synthetic(n=4)
    assert "GradientNoiseScale" not in by_label(plot(records))
    for i, record in enumerate(records):
        record["GradientNoiseScale"] = 10.0 * (i + 1)
    ax = by_label(plot(records))["GradientNoiseScale"]
    plotted = [value for collection in ax.collections for _, value in collection.get_offsets()]
    assert sorted(plotted) == [10.0, 20.0, 30.0, 40.0]


def test_smoothing_is_a_centred_quadratic_fit_against_numpy():
    values = np.random.default_rng(0).normal(size=60).cumsum()
    h = 4
    line = smoothed(values, half_width=h)
    x = np.arange(60)
    for i in range(60):
        half = min(h, i, 59 - i)  # symmetric up to both ends
        window = slice(i - half, i + half + 1)
        if half == h:  # inside: the parabola through the window, at its centre
            expected = np.polyval(np.polyfit(x[window], values[window], 2), i)
        else:  # near the ends: the mean of the shrunken symmetric window
            expected = values[window].mean()
        np.testing.assert_allclose(line[i], expected, rtol=1e-9, atol=1e-9)
    noisy = np.random.default_rng(1).normal(size=200)
    assert smoothed(noisy).std() < 0.4 * noisy.std()  # it does smooth
    np.testing.assert_array_equal(smoothed(values[:12]), values[:12])  # too few: as they are


def test_smooth_line_follows_a_monotone_curve_and_noisy_trends():
    def distance(step):  # rises fast, then flattens: a trailing mean sits below every point
        return 10.0 * (1.0 - np.exp(-(step + 1.0) / 60.0))

    records = [{"step": i, "Distance": distance(i)} for i in range(200)]
    (line,) = by_label(plot(records))["Distance"].get_lines()
    steps, values = line.get_data()
    error = values / distance(steps) - 1
    assert np.abs(error).max() < 0.05 and np.abs(error[20:-20]).max() < 0.002
    assert (error < 0).mean() < 0.5  # not below every point
    rng = np.random.default_rng(2)
    loss = 2.0 - 0.005 * np.arange(200) + 0.1 * rng.normal(size=200)
    records = [{"step": i, "Loss": v} for i, v in enumerate(loss)]
    (line,) = by_label(plot(records))["Performance"].get_lines()
    trend = 2.0 - 0.005 * line.get_xdata()
    assert np.abs(line.get_ydata() - trend)[5:-5].max() < 0.1  # centred: no lag behind the trend


def test_eval_metrics_are_markers_without_lines(runs):
    records = load_log(runs["controlled"])
    records[-1]["test_accuracy"] = 0.5
    records[0]["test_accuracy"] = 0.25
    fig = plot(records, log_steps=True)
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() == "test accuracy":
                assert line.get_linestyle() == "None" and line.get_marker() == "o"
                break
        else:
            continue
        break
    else:
        pytest.fail("no test accuracy drawn")


def test_linear_step_axis_labels_fit_the_narrow_gradient_test_panel():
    records = [{"step": s, "NormTest": 1.0, "InnerTest": 0.5} for s in range(1000, 2001, 10)]
    fig = plot(records)
    ax = by_label(fig)["GradientTests history"]
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) >= 2
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes))  # no two labels touch


def test_long_layer_names_do_not_overlap_their_element_count(tmp_path):
    long = "encoder.0.self_attn.in_proj_weight_of_a_very_long_module_name"
    layer = {"counts": [1, 2], "underflow": 0, "overflow": 0, "binned": 3, "population": 196608}
    hist = {"edges": [-1.0, 0.0, 1.0], "counts": [1, 2], "layers": {long: layer, "b": layer}}
    fig = plot_layerwise([{"step": 0, "GradHist1d": hist}], tmp_path / "l.png", dpi=50)
    fig.canvas.draw()
    ax = by_label(fig)[long]
    heading = ax._left_title  # the Text that set_title(loc="left") drew
    heading = heading.get_window_extent()
    (note,) = [t for t in ax.texts if t.get_text() == "196,608 elements"]
    assert not heading.overlaps(note.get_window_extent())
    assert heading.x1 <= ax.get_window_extent().x1 + 1  # shrunk or shortened to the panel
    assert ax.get_title("left").startswith("encoder.0.") and "…" in ax.get_title("left")
    assert by_label(fig)["b"].get_title("left") == "b"
    with Image.open(tmp_path / "l.png") as image:
        assert image.width == 800  # 16 inches at dpi 50


def test_animation_keeps_axis_scales_and_takes_dpi(tmp_path, monkeypatch):
    # GradNorm spans > 100x only late: a per-frame decision would switch linear -> log
    records = [{"step": i, "GradNorm": 1.0 if i < 10 else 1e3, "lr": 0.1} for i in range(20)]
    scales = []
    original = animate_module.draw_cockpit

    def spy(fig, frame_records, **options):
        original(fig, frame_records, **options)
        scales.append(by_label(fig)["GradNorm"].get_yscale())

    monkeypatch.setattr(animate_module, "draw_cockpit", spy)
    path = animate(records, tmp_path / "a.gif", frames=4, dpi=30)
    assert scales == ["log"] * 4
    assert by_label(plot(records[:10]))["GradNorm"].get_yscale() == "linear"  # a lone figure
    with Image.open(path) as image:
        assert image.size == (16 * 30, 12 * 30) and image.n_frames == 4
    with pytest.raises(ValueError, match="dpi"):
        animate(records, tmp_path / "b.gif", dpi=0)


def test_log_axis_within_one_decade_still_has_labels():
    records = [{"step": i, "GradNorm": 2.0 + 0.01 * i} for i in range(20)]
    view = View(0, 19, y_log=frozenset({"GradNorm"}))  # as in an early animation frame
    fig = new_figure((16.0, 12.0))
    draw_cockpit(fig, records, view=view)
    fig.canvas.draw()
    ax = by_label(fig)["GradNorm"]
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    assert ax.get_yscale() == "log" and any(label.strip() for label in labels)
