"""Static figures from a RunResult, a LiveRun or the store, and the live dashboard's bookkeeping."""
import numpy as np
import plotly.graph_objects as go
import pytest

import labkit
from labkit import LiveRun, RunConfig, Store, plots
from labkit.lab.dashboard import Dashboard, _Series
from labkit.events import EpochEnded, Logged, RunEnded, RunStarted, SegmentStarted

# Pruning scheduled halfway gives a run with two segments ("start", "prune: 0.0 -> 0.5") without a live change.
SMALL = dict(train_size=640, test_size=200, width=8, depth=2, batch_size=32, log_every=2, timing_warmup=2,
             epochs=2, prune=0.5, prune_at=0.5, device="cpu")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("plots") / "runs.db")
    result = labkit.run(RunConfig(**SMALL), store=store, progress=False)
    labkit.run(RunConfig(**{**SMALL, "prune": 0.0, "augment": "none", "epochs": 1}), store=store, progress=False)
    return store, result


def test_run_figures_from_a_result(stored):
    _, result = stored
    loss, throughput, segments = plots.run_figures(result)
    assert all(isinstance(f, go.Figure) for f in (loss, throughput, segments))
    assert len(loss.data[0].x) == len(result.history) and list(loss.data[1].y) == list(result.epochs["test_accuracy"])
    assert loss.data[1].yaxis == "y2"
    line, marks = throughput.data
    assert len(line.x) == len(result.history)
    assert np.isnan(line.y).sum() == result.history["throughput"].isna().sum()  # warm-up points left blank
    assert list(marks.text) == ["prune: 0.0 -> 0.5"]
    assert marks.x[0] == pytest.approx(result.segments["start_s"].iloc[1])
    assert list(segments.data[0].x) == ["#0 start", "#1 prune: 0.0 -> 0.5"]
    assert segments.data[0].y == pytest.approx(result.segments["throughput"].to_numpy(float))


def test_run_figures_from_the_store_match_the_result(stored):
    store, result = stored
    frames = plots.run_frames(result.run_id, store)
    assert list(frames.segments["label"]) == ["start", "prune: 0.0 -> 0.5"]
    assert frames.segments["throughput"].to_numpy(float) == pytest.approx(
        result.segments["throughput"].to_numpy(float), rel=1e-9)
    assert list(frames.segments["start_step"]) == list(result.segments["start_step"])
    fig = plots.throughput_figure(result.run_id, store)
    assert list(fig.data[1].text) == ["prune: 0.0 -> 0.5"] and len(fig.data[0].x) == len(result.history)


def test_run_figures_from_a_live_run(tmp_path):
    live = LiveRun(RunConfig(**{**SMALL, "prune": 0.0, "epochs": 1}), store=Store(tmp_path / "r.db")).start()
    live.set(amp="bf16")
    result = live.wait(120)
    assert result.status == "completed"
    fig = plots.segments_figure(live)
    assert list(fig.data[0].x) == ["#0 start", "#1 amp: off -> bf16"]
    with pytest.raises(TypeError, match="RunResult, a LiveRun or a stored run id"):
        plots.throughput_figure("nonsense")


def test_the_comparison_shows_stored_runs_with_frontier_and_config(stored):
    store, result = stored
    fig = plots.comparison_figure(store, highlight=result.run_id)
    runs = store.runs()
    points, frontier, mine = fig.data
    assert list(points.x) == pytest.approx(list(runs["throughput"]))
    assert "augment=none" in points.hovertext[1] and "prune=0.5" in points.hovertext[0]
    assert len(frontier.x) in (1, 2) and list(mine.x) == pytest.approx([result.throughput])


def test_pareto_front_keeps_only_unbeaten_runs():
    throughput = [100, 200, 300, 400, 250]
    accuracy = [0.9, 0.5, 0.7, 0.1, 0.6]
    assert list(plots.pareto_front(throughput, accuracy)) == [0, 2, 3]
    assert list(plots.pareto_front([1, 1], [0.5, 0.6])) == [1]  # an equal-speed, less accurate run is beaten


def test_segment_labels_name_each_change():
    old = {"amp": "off", "batch_size": 128, "prune": 0.0}
    assert plots.segment_label(None, old) == "start"
    assert plots.segment_label(old, {**old, "amp": "bf16", "batch_size": 256}) == \
        "batch_size: 128 -> 256, amp: off -> bf16"


# ---- the live dashboard (fed by hand-made events; no training needed) -------------------------------------
def logged(step, time_s, throughput, segment=0, batch_size=32):
    return Logged(step=step, epoch=1, segment=segment, time_s=time_s, loss=1.0, lr=0.1, batch_size=batch_size,
                  throughput=throughput, data_s=0.0, compute_s=0.0, loss_scale=None, skipped_steps=0)


def test_the_series_is_capped_keeping_the_newest_point():
    series = _Series(cap=100)
    for i in range(100_000):
        series.add(float(i), float(i))
    x, y = series.arrays()
    assert 50 <= len(x) <= 100 and x[-1] == 99_999 and x.dtype == np.float64
    assert np.all(np.diff(x) > 0)


def test_the_dashboard_redraws_at_most_at_its_rate_and_tallies_segments(tmp_path):
    board = Dashboard(Store(tmp_path / "d.db"), max_points=500, min_interval_s=3600)
    board(RunStarted({}, {}, 10))
    board(SegmentStarted(0, 0, 0.0, {}, {}))
    redraws = board.redraws
    for i in range(1, 2001):  # 2,000 logged points in a burst: one redraw at most
        board(logged(step=2 * i, time_s=float(i), throughput=None if i == 1 else 100.0 + i % 2 * 100))
    assert board.redraws - redraws <= 1
    board(SegmentStarted(1, 4000, 2001.0, {}, {"amp": ("off", "bf16")}))
    board(logged(step=4004, time_s=2002.0, throughput=50.0, segment=1, batch_size=64))
    board(EpochEnded(epoch=1, step=4004, time_s=2003.0, segment=1, train_loss=1.0, test_accuracy=0.5,
                     train_accuracy=0.5, epoch_time_s=1.0))  # forces a redraw
    line, marks = board.throughput_fig.data
    assert len(line.x) <= 500 and line.x[-1] == 2002.0 and isinstance(line.y, np.ndarray)
    assert list(marks.text) == ["amp: off -> bf16"] and marks.x[0] == 2001.0
    first, second = board.segment_throughput()
    # Equal images per interval at 100 and 200 img/s: images / seconds is their harmonic mean.
    assert first == pytest.approx(2 / (1 / 100 + 1 / 200), rel=1e-3) and second == pytest.approx(50.0)
    assert list(board.segments_fig.data[0].x) == ["#0 start", "#1 amp: off -> bf16"]
    assert list(board.loss_fig.data[1].y) == [0.5]


def test_the_dashboard_stars_the_finished_run_among_stored_ones(stored):
    store, result = stored
    board = Dashboard(store)
    board(RunEnded(result))
    assert list(board.compare_fig.data[2].x) == pytest.approx([result.throughput])
    assert len(board.compare_fig.data[0].x) == len(store.runs())
