"""labkit.quantize: int8 post-training quantization of a saved run, measured against fp32 and bf16.

One tiny run is trained once (width 8, depth 2, 4096 images x 2 epochs without augmentation: about 63% test
accuracy where chance is 10%, so int8 keeping its accuracy means something) and quantized by each method,
measured eager to stay fast; one test compiles the int8 model. Timings are never asserted beyond being positive
numbers: what is faster lives in benchmarks/quantization.py."""
from __future__ import annotations

import math
import re

import pytest
import torch

import labkit
from labkit import RunConfig, Store
from labkit import checkpoints, data as data_mod, models
from labkit.checkpoints import CheckpointError
from labkit.cli import main
from labkit.quantization import QuantizationError

TINY = dict(width=8, depth=2, train_size=4096, test_size=512, epochs=2, batch_size=64, augment="none")
FAST = dict(calibration_batches=4, large_batch=64, repeats=3, warmup=1, compile=False, progress=False)
LAYERS = ["0", "4", "7", "11", "14", "19"]  # the tiny cnn's five convolutions and its Linear head


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(tmp_path_factory.mktemp("quantize") / "labkit.db")


@pytest.fixture(scope="module")
def trained(store, one_thread):
    result = labkit.run(store=store, save=True, progress=False, **TINY)
    assert result.status == "completed" and result.checkpoint, result.error
    return result


@pytest.fixture(scope="module")
def static(trained, store):
    return labkit.quantize(trained.run_id, "static", store=store, **FAST)


@pytest.fixture(scope="module")
def dynamic(trained, store):
    return labkit.quantize(trained.run_id, "dynamic", store=store, **FAST)


@pytest.fixture(scope="module")
def unsaved(store, one_thread):
    """A run that kept no checkpoint (save=False)."""
    return labkit.run(store=store, progress=False, **{**TINY, "train_size": 256, "max_steps": 1})


def _row(result, variant: str) -> dict:
    return result.table.set_index("variant").loc[variant].to_dict()


# ---- the figures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_every_figure_is_measured_for_every_variant(request, method):
    result = request.getfixturevalue(method)
    table = result.table
    assert list(table["variant"]) == ["fp32", "bf16", "int8"]
    assert table["accuracy"].between(0, 1).all()
    assert _row(result, "fp32")["accuracy"] > 0.4  # it learned (chance is 0.1): int8's accuracy means something
    for column in ("size_bytes", "latency_ms_b1", "latency_ms_large", "images_per_s_b1", "images_per_s_large"):
        assert all(math.isfinite(v) and v > 0 for v in table[column]), (column, list(table[column]))
    assert table["images_per_s_large"].round(6).equals((64 * 1e3 / table["latency_ms_large"]).round(6))
    assert not table["compiled"].any() and table["compile_s"].isna().all()
    assert result.threads == torch.get_num_threads() == 1
    assert result.method == method and result.large_batch == 64


def test_static_int8_quantizes_every_convolution_and_the_head_and_shrinks_the_model(static):
    layers = static.layers
    assert list(layers["layer"]) == LAYERS
    assert layers["quantized"].all() and set(layers["weights"]) == {"int8"}
    assert set(layers.loc[layers["type"] == "Conv2d", "layer"]) == set(LAYERS[:-1])
    assert _row(static, "int8")["quantized_layers"] == 6
    fp32, bf16, int8 = (_row(static, v) for v in ("fp32", "bf16", "int8"))
    # measured: int8 0.32x, bf16 0.56x (the tiny model's file is partly pickling overhead and int64 counters)
    assert int8["size_bytes"] < 0.45 * fp32["size_bytes"]
    assert 0.45 < bf16["size_bytes"] / fp32["size_bytes"] < 0.65
    assert static.table["size_vs_fp32"].tolist() == pytest.approx(
        [1.0, bf16["size_bytes"] / fp32["size_bytes"], int8["size_bytes"] / fp32["size_bytes"]])
    # measured: int8 and bf16 within 0.4 points of fp32; a wrong scale would fall towards chance (10%)
    assert abs(int8["accuracy"] - fp32["accuracy"]) < 0.03
    assert abs(bf16["accuracy"] - fp32["accuracy"]) < 0.03


def test_dynamic_int8_quantizes_the_linear_head_only_and_says_static_would_do_more(dynamic):
    layers = dynamic.layers.set_index("layer")
    assert list(layers.index[layers["quantized"]]) == ["19"] and layers.loc["19", "type"] == "Linear"
    assert (layers.loc[LAYERS[:-1], "weights"] == "fp32").all()
    fp32, int8 = _row(dynamic, "fp32"), _row(dynamic, "int8")
    assert int8["quantized_layers"] == 1
    assert 0.9 < int8["size_bytes"] / fp32["size_bytes"] < 1.1  # the head is 320 of 18,000 weights
    assert abs(int8["accuracy"] - fp32["accuracy"]) < 0.03
    note = next(n for n in dynamic.notes if "layers are int8" in n)
    assert note.startswith("1 of 6 layers are int8") and "Linear layers only" in note and "method='static'" in note


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_the_notes_compare_with_fp32_from_the_measurements(request, method):
    result = request.getfixturevalue(method)
    fp32 = _row(result, "fp32")
    for variant in ("int8", "bf16"):
        row = _row(result, variant)
        for batch, column in ((1, "latency_ms_b1"), (64, "latency_ms_large")):
            note = next(n for n in result.notes if n.startswith(f"{variant} is ") and f"at batch {batch} " in n)
            assert f"({row[column]:.2f} ms against {fp32[column]:.2f} ms" in note
            ratio = row[column] / fp32[column]
            verdict = "slower" if ratio > 1.1 else "faster" if ratio < 1 / 1.1 else "as fast as"
            assert verdict in note, (ratio, note)
            if verdict != "as fast as":
                assert f"{max(ratio, 1 / ratio):.2f}x" in note
    int8 = _row(result, "int8")
    size = next(n for n in result.notes if "size on disk" in n)
    assert f"{int8['size_bytes'] / fp32['size_bytes']:.2f}x" in size and f"{int8['accuracy']:.1%}" in size
    slower = any(int8[c] > 1.1 * fp32[c] for c in ("latency_ms_b1", "latency_ms_large"))
    assert any(n.startswith("why int8") for n in result.notes) == slower


def test_the_summary_and_the_figure_show_every_variant(static):
    text = static.summary()
    assert f"run {static.source_run}: static int8" in text and "1 thread;" in text
    assert all(re.search(rf"^\s*{v}\s+False\s", text, re.M) for v in ("fp32", "bf16", "int8")), text
    assert all(f"- {note}" in text for note in static.notes)
    fig = static.figure()
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert len(bars) == 4 and all(list(bar.x) == ["fp32", "bf16", "int8"] for bar in bars)
    assert list(bars[0].y) == pytest.approx([a * 100 for a in static.table["accuracy"]])
    assert list(bars[1].y) == pytest.approx([b / 1024 for b in static.table["size_bytes"]])
    assert list(bars[3].y) == pytest.approx(list(static.table["latency_ms_large"]))
    assert "batch 64" in fig.layout.annotations[3].text


# ---- stored as an evaluation of the run ---------------------------------------------------------------------------
def test_each_call_is_stored_as_an_evaluation_of_its_source_run(static, dynamic, trained, store):
    for result in (static, dynamic):
        record = store.run_record(result.evaluation_id)
        assert record["kind"] == "quantize" and record["status"] == "completed" and record["error"] is None
        assert record["info"]["source_run"] == trained.run_id and record["info"]["method"] == result.method
        assert record["config"]["width"] == 8  # the source run's configuration
        summary = record["summary"]
        assert summary["source_run"] == trained.run_id and summary["notes"] == result.notes
        assert [row["accuracy"] for row in summary["table"]] == list(result.table["accuracy"])
        assert [row["layer"] for row in summary["layers"]] == LAYERS
    listed = labkit.runs(store, kind="quantize")
    assert {static.evaluation_id, dynamic.evaluation_id} <= set(listed["id"])
    assert all(s["source_run"] == trained.run_id for s in listed["summary"])
    assert trained.run_id in set(labkit.runs(store)["id"])  # training runs are listed apart from evaluations


def test_a_model_the_quantizer_cannot_take_is_recorded_as_failed_and_refused(tmp_path, store):
    """A real failure, no mock: torchao 0.18's X86InductorQuantizer cannot annotate torchvision's ResNet blocks,
    which call one ReLU module twice (pytorch/ao#4478). When a torchao upgrade fixes that, this test needs another
    model the quantizer refuses."""
    config = RunConfig(model="resnet18", train_size=64, test_size=16)
    data = data_mod.load(config.dataset, config.train_size, config.test_size)
    model = models.build("resnet18", data.num_classes).eval()  # untrained: the failure comes before any figure
    path = tmp_path / "resnet18.pt"
    checkpoints.write(path, checkpoints.payload(model, config, data))
    before = set(labkit.runs(store, kind="quantize")["id"])
    with pytest.raises(QuantizationError, match="'resnet18'") as info:
        labkit.quantize(path, "static", store=store, **{**FAST, "calibration_batches": 1, "batch_size": 8})
    assert "pytorch/ao#4478" in str(info.value) and "method='dynamic'" in str(info.value)
    failed = labkit.runs(store, kind="quantize", status="failed")
    new = failed[~failed["id"].isin(before)]
    assert len(new) == 1 and "QuantizationError" in new["error"].iloc[0]
    assert store.run_record(int(new["id"].iloc[0]))["info"]["checkpoint"] == str(path)


def test_bad_arguments_are_refused_before_anything_is_recorded(trained, store):
    before = len(labkit.runs(store, kind=None))
    with pytest.raises(ValueError, match=r"method='int4'.*'static'.*'dynamic'"):
        labkit.quantize(trained.run_id, "int4", store=store)
    with pytest.raises(ValueError, match=r"variants=\('fp16',\)"):
        labkit.quantize(trained.run_id, variants=("fp16",), store=store)
    with pytest.raises(ValueError, match="large_batch=0"):
        labkit.quantize(trained.run_id, large_batch=0, store=store)
    assert len(labkit.runs(store, kind=None)) == before


def test_a_run_without_a_checkpoint_is_refused_with_the_fix(unsaved, store):
    with pytest.raises(CheckpointError, match=rf"run {unsaved.run_id} kept no checkpoint.*save=True"):
        labkit.quantize(unsaved.run_id, store=store, **FAST)


# ---- the command line ---------------------------------------------------------------------------------------------
def test_the_cli_prints_the_table_and_the_notes(trained, store, capsys):
    before = len(labkit.runs(store, kind="quantize"))
    code = main(["quantize", str(trained.run_id), "--method", "dynamic", "--db", str(store.path), "--no-compile",
                 "--quiet", "--repeats", "2", "--large-batch", "32", "--no-store"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"run {trained.run_id}: dynamic int8") and "evaluation" not in out.splitlines()[0]
    assert all(re.search(rf"^\s*{v}\s+False\s+\d+\.\d%", out, re.M) for v in ("fp32", "bf16", "int8")), out
    assert "b32_ms" in out and "\n- 1 of 6 layers are int8" in out
    assert len(labkit.runs(store, kind="quantize")) == before  # --no-store: the run looked up in --db, not recorded


def test_the_cli_exits_1_with_the_fix_for_a_run_without_a_checkpoint(unsaved, store, capsys):
    code = main(["quantize", str(unsaved.run_id), "--db", str(store.path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"labkit: error: run {unsaved.run_id} kept no checkpoint") and "--save" in err
    assert "Traceback" not in err


# ---- compiled: the fast path ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_static_int8_keeps_its_accuracy_and_reports_the_compile_time_apart(trained, static):
    result = labkit.quantize(trained.checkpoint, "static", record=False, variants=("int8",),  # by its path
                             **{**FAST, "compile": True})
    row = _row(result, "int8")
    assert result.evaluation_id is None and list(result.table["variant"]) == ["int8"]
    assert row["compiled"] and row["compile_s"] > 0 and row["latency_ms_b1"] > 0
    assert not any("torch.compile failed" in n for n in result.notes), result.notes
    # Inductor's int8 kernels against the eager reference graph: the same scales, slightly different rounding
    assert abs(row["accuracy"] - _row(static, "int8")["accuracy"]) < 0.02
    assert row["size_bytes"] == _row(static, "int8")["size_bytes"]
