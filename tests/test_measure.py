"""The throughput accounting alone, with made-up times: what is timed, what is left out, how segments add up."""
import pytest

from labkit.measure import Meter


def train(meter, steps, images=100):
    for _ in range(steps):
        meter.step(images)


def test_warm_up_steps_are_left_out_and_intervals_are_contiguous():
    meter = Meter(timing_warmup=2, log_every=3)
    meter.start_segment({"amp": "off"}, step=0, time_s=0.0, now=10.0)
    logged = []
    for step in range(1, 9):
        meter.step(100)
        if meter.log_due():
            logged.append(step)
            # each step takes 1 s; the interval closes at the logged step's time
            meter.close(now=10.0 + step, step=step, time_s=float(step), data_s=0.1, compute_s=0.8)
    assert logged == [2, 5, 8]  # the end of the warm-up, then every 3 steps
    seg = meter.segments[0]
    # steps 1-2 (warm-up) are not timed; steps 3-8 are: 600 images in 6 s
    assert (seg["timed_images"], seg["timed_s"], seg["throughput"]) == (600, 6.0, 100.0)
    assert seg["data_s"] == pytest.approx(0.2) and seg["compute_s"] == pytest.approx(1.6)
    assert (seg["start_step"], seg["end_step"], seg["end_s"], seg["amp"]) == (0, 8, 8.0, "off")


def test_close_returns_the_interval_throughput_or_none_during_warm_up():
    meter = Meter(timing_warmup=1, log_every=2)
    meter.start_segment({}, 0, 0.0, now=0.0)
    train(meter, 1, images=64)
    assert meter.close(now=1.0, step=1, time_s=1.0, data_s=0.0, compute_s=0.0) is None  # the warm-up interval
    train(meter, 2, images=64)
    assert meter.close(now=1.5, step=3, time_s=1.5, data_s=0.0, compute_s=0.0) == pytest.approx(128 / 0.5)


def test_restart_drops_the_open_interval():
    """A pause or an evaluation: the time since the last logged point is not counted."""
    meter = Meter(timing_warmup=0, log_every=1)
    meter.start_segment({}, 0, 0.0, now=0.0)
    train(meter, 1)
    meter.close(now=1.0, step=1, time_s=1.0, data_s=0.0, compute_s=0.0)
    meter.restart(now=100.0)  # 99 s of evaluation or pause
    train(meter, 1)
    meter.close(now=101.0, step=2, time_s=101.0, data_s=0.0, compute_s=0.0)
    assert meter.segments[0]["timed_s"] == 2.0 and meter.segments[0]["throughput"] == 100.0


def test_each_segment_warms_up_again_and_totals_add_up():
    meter = Meter(timing_warmup=1, log_every=1)
    for index, (seconds_per_step, now) in enumerate([(1.0, 0.0), (0.5, 10.0)]):
        assert meter.start_segment({"batch_size": 100}, step=index * 4, time_s=now, now=now) == index
        t = now
        for step in range(4):
            meter.step(100)
            t += seconds_per_step
            meter.close(now=t, step=index * 4 + step + 1, time_s=t, data_s=0.0, compute_s=0.0)
    first, second = meter.segments
    assert (first["timed_images"], first["throughput"]) == (300, 100.0)
    assert (second["timed_images"], second["throughput"]) == (300, 200.0)
    totals = meter.totals()
    assert (totals["timed_images"], totals["timed_s"]) == (600, 4.5)
    assert totals["throughput"] == pytest.approx(600 / 4.5)


def test_nothing_timed_gives_no_throughput():
    meter = Meter(timing_warmup=5, log_every=1)
    meter.start_segment({}, 0, 0.0, now=0.0)
    train(meter, 3)
    meter.close(now=3.0, step=3, time_s=3.0, data_s=0.0, compute_s=0.0)
    assert meter.segments[0]["throughput"] is None and meter.totals()["throughput"] is None
