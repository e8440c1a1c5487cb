"""Which precisions a device runs natively, what amp="auto" picks, and how runs and the panel report it.

The CPU's side is tested both ways on any machine: the flags are faked, or ONEDNN_MAX_CPU_ISA=AVX2 is set, which
is how a CPU with bf16 units is made to behave as one without them. The GPU's side fakes the CUDA queries."""
import pytest
import torch

import labkit
from labkit import Lab, RunConfig, Store, devices

CPU = torch.device("cpu")
TINY = dict(train_size=256, test_size=64, batch_size=32, width=4, depth=1, max_steps=2, timing_warmup=0,
            log_every=1, store=False, progress=False)


@pytest.fixture
def no_bf16_units(monkeypatch):
    """A CPU with AVX2 and FMA only (an AMD EPYC of the Zen 2/3 kind): bf16 is emulated there."""
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"fpu", "sse4_2", "avx", "avx2", "fma"})


@pytest.fixture
def bf16_units(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_a_cpu_without_bf16_units_emulates_bf16_and_auto_picks_fp32(no_bf16_units):
    modes = devices.precisions(CPU)
    assert [m for m, p in modes.items() if p.native] == ["off"]
    assert modes["bf16"].available and "emulated" in modes["bf16"].note and "slower" in modes["bf16"].note
    assert modes["fp16"].available and not modes["fp16"].native
    assert devices.resolve_amp("auto", CPU) == "off"
    assert devices.resolve_amp("bf16", CPU) == "bf16"  # emulated modes still run: the lesson measures them


def test_a_cpu_with_bf16_units_runs_bf16_natively_and_auto_picks_it(bf16_units):
    modes = devices.precisions(CPU)
    assert modes["bf16"].native and "AMX-BF16" in modes["bf16"].note and "AVX512-BF16" in modes["bf16"].note
    assert not modes["fp16"].native  # no CPU has fast fp16 training kernels in PyTorch
    assert devices.resolve_amp("auto", CPU) == "bf16"


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_onednn_isa_cap_decides_whether_the_units_are_used(bf16_units, monkeypatch, cap, native):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert devices.precisions(CPU)["bf16"].native is native
    assert devices.resolve_amp("auto", CPU) == ("bf16" if native else "off")


@pytest.mark.parametrize("gpu, capability, bf16_emulated, expect", [
    ("NVIDIA H100 80GB HBM3", (9, 0), True, {"bf16": "native", "fp16": "native", "auto": "bf16"}),
    ("Tesla T4", (7, 5), True, {"bf16": "emulated", "fp16": "native", "auto": "fp16"}),
    ("Tesla V100", (7, 0), False, {"bf16": "unavailable", "fp16": "native", "auto": "fp16"}),
    ("Tesla P100", (6, 0), False, {"bf16": "unavailable", "fp16": "emulated", "auto": "off"}),
])
def test_gpu_precisions_follow_the_compute_capability(monkeypatch, gpu, capability, bf16_emulated, expect):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_emulated)
    modes = devices.precisions(torch.device("cuda"))

    def state(p):
        return "native" if p.native else "emulated" if p.available else "unavailable"
    assert {m: state(modes[m]) for m in ("bf16", "fp16")} == {k: v for k, v in expect.items() if k != "auto"}
    assert gpu in modes["bf16"].note
    assert devices.resolve_amp("auto", torch.device("cuda")) == expect["auto"]
    if expect["bf16"] == "unavailable":
        with pytest.raises(ValueError, match=r"amp='bf16' cannot run on cuda: .*needs 8\.0\+.*use amp='auto'"):
            devices.resolve_amp("bf16", torch.device("cuda"))


def test_a_run_reports_the_precision_it_used_and_whether_it_was_native(no_bf16_units):
    auto = labkit.run(**TINY, amp="auto")
    assert auto.status == "completed" and auto.config.amp == "auto"  # the configuration keeps what was asked
    assert (auto.precision, auto.precision_native) == ("fp32", True)
    assert list(auto.segments["amp"]) == ["off"]  # the resolved mode is what trained
    emulated = labkit.run(**TINY, amp="bf16")
    assert (emulated.precision, emulated.precision_native) == ("bf16", False)
    assert "precision       bf16 (emulated on this CPU" in emulated.summary()
    assert emulated.to_dict()["precision_native"] is False


def test_auto_follows_the_hardware(bf16_units):
    result = labkit.run(**TINY, amp="auto")
    assert (result.precision, result.precision_native) == ("bf16", True)
    assert "native on" in result.summary()


def test_the_store_keeps_the_precision_next_to_the_configuration(no_bf16_units, tmp_path):
    store = Store(tmp_path / "runs.db")
    labkit.run(**{**TINY, "store": store}, amp="auto")
    row = labkit.runs(store).iloc[0]
    assert (row["amp"], row["precision"], bool(row["precision_native"])) == ("auto", "fp32", True)


def test_the_panel_marks_emulated_modes_and_keeps_them_clickable(no_bf16_units, tmp_path):
    panel = Lab(RunConfig(train_size=256, test_size=64, amp="auto"), store=Store(tmp_path / "runs.db"))
    assert panel.amp == "off" and panel.amp_buttons["off"].button_style == "primary"  # auto resolved
    for mode in ("bf16", "fp16"):
        button = panel.amp_buttons[mode]
        assert not button.disabled and "labkit-amp-emulated" in button._dom_classes
        assert button.icon == "exclamation-triangle" and "emulated" in button.tooltip
    assert "bf16: emulated on this CPU" in panel.amp_note.value and "much slower" in panel.amp_note.value
    panel.amp_buttons["bf16"].click()
    assert panel.config.amp == "bf16"  # chosen anyway: the lesson is in measuring it


def test_a_mode_the_device_cannot_run_is_disabled_with_its_reason(tmp_path, monkeypatch):
    # Stand in for a GPU without bf16 (a CPU runs every mode).
    modes = {"off": devices.Precision("off", True, True, "fp32"),
             "bf16": devices.Precision("bf16", False, False, "no bf16 on this GPU"),
             "fp16": devices.Precision("fp16", True, True, "native")}
    monkeypatch.setattr(devices, "precisions", lambda device: modes)
    panel = Lab(RunConfig(train_size=256, test_size=64), store=Store(tmp_path / "runs.db"))
    button = panel.amp_buttons["bf16"]
    assert button.disabled and button.tooltip == "bf16: no bf16 on this GPU"
    assert "bf16: no bf16 on this GPU" in panel.amp_note.value


def test_hardware_line_says_what_is_native(no_bf16_units):
    line = labkit.lessons.hardware("cpu")
    assert "bf16 units: none found" in line and "native: fp32; emulated: bf16, fp16" in line
