"""Which device trains, what it can do, and how its memory and time are read."""
from __future__ import annotations

import platform
import resource
import sys

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


def amp_support(device: torch.device) -> dict[str, str | None]:
    """For each `amp` value: None when the device can run it, else the reason it cannot."""
    reasons: dict[str, str | None] = {"off": None, "bf16": None, "fp16": None}
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            reasons["bf16"] = f"{torch.cuda.get_device_name(device)} has no native bf16 (needs compute capability 8.0+)"
    elif device.type == "mps":
        try:
            torch.ones(1, device=device, dtype=torch.bfloat16)
        except (RuntimeError, TypeError):
            reasons["bf16"] = "this macOS/MPS version has no bf16 (needs macOS 14+)"
    return reasons


def check_amp(amp: str, device: torch.device) -> None:
    reason = amp_support(device).get(amp)
    if reason:
        raise ValueError(f"amp={amp!r} cannot run on {device}: {reason}; use amp='fp16' or 'off'.")


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
