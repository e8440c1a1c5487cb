"""The CUDA path: resident data on the GPU, CUDA-event timing, AMP, channel pruning, OOM recovery, live changes.

Skipped where torch sees no CUDA GPU (CI has none); run them on a GPU machine with `pytest -m gpu`.
"""
import pytest
import torch

import labkit
from labkit import LiveRun, RunConfig, Store
from labkit.data import DeviceBatches
from labkit.train import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = dict(train_size=4096, test_size=1024, epochs=2, batch_size=256, device="cuda", progress=False)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_runs_on_the_gpu_with_resident_data(amp, tmp_path):
    collect = []
    trainer = Trainer(RunConfig(**{k: v for k, v in SMALL.items() if k != "progress"}, amp=amp),
                      listeners=[collect.append])
    result = trainer.run()
    assert result.status == "completed", result.error
    assert result.device.startswith("cuda") and isinstance(trainer.train_batches, DeviceBatches)
    assert trainer.train_batches.images.is_cuda and trainer.train_batches.images.dtype == torch.uint8
    assert 0 < result.data_time_s + result.compute_time_s  # CUDA events were read
    assert result.peak_memory_bytes > trainer.train_batches.images.numel()  # the data itself is on the GPU
    assert (result.loss_scale is not None) == (amp == "fp16")


def test_channel_pruning_on_the_gpu_cuts_flops():
    result = labkit.run(**SMALL, store=False, prune=0.5, prune_method="channels")
    assert result.status == "completed" and result.flops_per_image < 0.35 * result.dense_flops_per_image
    assert list(result.segments["prune"]) == [0.0, 0.5]


def test_out_of_memory_fails_cleanly_and_the_next_run_works(tmp_path):
    store = Store(tmp_path / "gpu.db")
    free, _ = torch.cuda.mem_get_info()
    # A resnet18 batch whose activations cannot fit: about 1.2 MB of activations per 32x32 image in fp32.
    huge = min(65536, max(4096, int(free / 1.0e6)))
    result = labkit.run(model="resnet18", batch_size=huge, train_size=huge, test_size=256, max_steps=1,
                        device="cuda", store=store, progress=False)
    if result.status == "completed":
        pytest.skip(f"batch {huge} fitted in {free / 2**30:.0f} GiB; no OOM to test")
    assert result.status == "failed" and "out of memory" in result.error and f"batch_size={huge}" in result.error
    assert labkit.run(**SMALL, store=store).status == "completed"
    assert list(labkit.runs(store)["status"]) == ["failed", "completed"]


def test_live_changes_on_the_gpu():
    live = LiveRun(RunConfig(**{**{k: v for k, v in SMALL.items() if k != "progress"}, "epochs": 50}),
                   store=False).start()
    try:
        assert live.wait_measured(timeout=120)
        live.set(amp="bf16", batch_size=512)
        assert live.wait_measured(timeout=120)
        live.set(prune=0.5, prune_method="channels")
        assert live.wait_measured(timeout=120)
    finally:
        live.stop()
    result = live.wait(timeout=120)
    assert result.status == "stopped"
    assert list(result.segments["amp"]) == ["off", "bf16", "bf16"]
    assert result.segments["throughput"].notna().all()
