"""Which device trains, what it can do, and how its memory and time are read."""
from __future__ import annotations

import gc
import os
import platform
import resource
import sys
from dataclasses import dataclass

import torch

# Dense peak TFLOP/s by GPU name (vendor spec sheets): bf16/fp16 tensor cores, and tf32 for "off".
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "off": 495.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "off": 495.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "off": 156.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "off": 60.0},
    "A10": {"bf16": 125.0, "fp16": 125.0, "off": 62.5},
}


def resolve_device(name: str) -> torch.device:
    """Turn the `device` setting into a torch.device, or say why that device cannot be used."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: no CUDA GPU is visible to torch here; use device='cpu' or 'auto'.")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} GPU(s) are visible "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps': the Apple GPU backend is not available here; use device='cpu' or 'auto'.")
    return torch.device(name)


# ---- precisions: which `amp` modes a device runs, and which of them natively -----------------------------------
AMP_DTYPE_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}
_CPU_BF16_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


@dataclass(frozen=True)
class Precision:
    """How a device runs one `amp` mode. `native`: the hardware computes in that type, so it can be faster than
    fp32; otherwise it is emulated (converted in software) and usually much slower. `note` says why."""

    mode: str
    available: bool
    native: bool
    note: str = ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 compute units that PyTorch's kernels (oneDNN) use: AMX-BF16, AVX512-BF16; [] where none.

    ONEDNN_MAX_CPU_ISA limits what oneDNN may use: set to AVX2 (or anything below AVX512_CORE_BF16), the units
    are there but unused, and bf16 is emulated. It is also how a test or a class makes a CPU behave as one
    without bf16 units."""
    flags = cpu_flags()
    if not flags:  # not Linux: ask torch (it reads CPUID itself)
        flags = {flag for flag, probe in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                          ("amx_bf16", "_is_amx_tile_supported"))
                 if getattr(torch.cpu, probe, lambda: False)()}
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in ("ALL", "DEFAULT") and not any(word in cap for word in ("BF16", "AMX", "FP16", "AVX10")):
        return []
    return [label for flag, label in _CPU_BF16_UNITS.items() if flag in flags]


def cpu_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def precisions(device: torch.device) -> dict[str, Precision]:
    """For each `amp` mode ("off", "bf16", "fp16"): whether `device` runs it, and whether natively.

    CPU: bf16 is native with AMX-BF16 or AVX512-BF16 units (see cpu_bf16_units); fp16 is always emulated (no
    fast fp16 training kernels for CPUs in PyTorch: its convolution backward falls back to slow code).
    CUDA: bf16 is native from compute capability 8.0 (Ampere), fp16 from 7.0 (tensor cores, Volta).
    MPS: fp16 is native; bf16 needs macOS 14."""
    modes = {"off": Precision("off", True, True, "fp32")}
    if device.type == "cpu":
        units = cpu_bf16_units()
        modes["bf16"] = Precision("bf16", True, bool(units), f"native on {' and '.join(units)}" if units else
                                  "emulated on this CPU (no AVX512-BF16 or AMX-BF16 units in use): expect it to be "
                                  "much slower than fp32")
        modes["fp16"] = Precision("fp16", True, False, "emulated on CPUs (PyTorch has no fast fp16 training kernels "
                                  "for them): expect it to be much slower than fp32")
    elif device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        cc = f"compute capability {major}.{minor}"
        if major >= 8:
            modes["bf16"] = Precision("bf16", True, True, f"native on {name} ({cc})")
        elif torch.cuda.is_bf16_supported(including_emulation=True):
            modes["bf16"] = Precision("bf16", True, False, f"emulated on {name} ({cc}; native bf16 needs 8.0+): "
                                      "expect it to be slower than fp16")
        else:
            modes["bf16"] = Precision("bf16", False, False, f"{name} cannot run bf16 ({cc}; needs 8.0+)")
        modes["fp16"] = Precision("fp16", True, major >= 7, f"native on {name} ({cc})" if major >= 7 else
                                  f"no tensor cores on {name} ({cc}; needs 7.0+): expect little or no speed-up")
    elif device.type == "mps":
        try:
            torch.ones(1, device=device, dtype=torch.bfloat16)
            modes["bf16"] = Precision("bf16", True, True, "native on this Apple GPU")
        except (RuntimeError, TypeError):
            modes["bf16"] = Precision("bf16", False, False, "this macOS/MPS version has no bf16 (needs macOS 14+)")
        modes["fp16"] = Precision("fp16", True, True, "native on this Apple GPU")
    else:
        modes.update(bf16=Precision("bf16", True, False, f"not known to be native on {device.type}"),
                     fp16=Precision("fp16", True, False, f"not known to be native on {device.type}"))
    return modes


def resolve_amp(amp: str, device: torch.device) -> str:
    """The mode an `amp` setting means on `device`: "auto" is the first native one of bf16, fp16, else "off"
    (bf16 first: it needs no loss scaling). Raises ValueError for a mode the device cannot run at all."""
    modes = precisions(device)
    if amp == "auto":
        return next((m for m in ("bf16", "fp16") if modes[m].native), "off")
    if not modes[amp].available:
        raise ValueError(f"amp={amp!r} cannot run on {device}: {modes[amp].note}; use amp='auto', 'fp16' or 'off'.")
    return amp


def release_cached(device: torch.device) -> None:
    """Free what dropped tensors still hold: Python's cycles, then the CUDA caching allocator's blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif sys.platform.startswith("linux"):
        # Writing 5 to clear_refs resets the process's peak RSS (VmHWM), so the peak is this run's.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_bytes(device: torch.device) -> int:
    """GPU: peak bytes allocated by tensors. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_flops(device: torch.device, amp: str) -> float | None:
    """The device's dense peak FLOP/s for this precision, when known (else None: no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in _PEAK_TFLOPS.items():
        if key in name:
            return peaks[amp] * 1e12
    return None


def describe(device: torch.device) -> dict[str, str]:
    """Hardware and library versions, stored with every run."""
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["cuda"] = str(torch.version.cuda)
    return info
