"""Device choice, seeding, threads and a one-call environment report."""
from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from typing import Iterator

import numpy as np
import torch

__all__ = ["cpu_cores", "environment_report", "memory_total_gb", "peak_rss_mb", "pick_device", "seed_everything",
           "set_threads", "threads"]


def pick_device(preference: str = "auto") -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU (or the one asked for)."""
    if preference not in (None, "auto"):
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={preference!r} was asked for, but CUDA is not available here; "
                               "use device='auto' or 'cpu'.")
        if dev.type == "mps" and not _mps_available():
            raise RuntimeError(f"device={preference!r} was asked for, but Apple MPS is not available here.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch (all devices) so a lesson reruns identically."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Use `n` CPU threads (default: every core the process may use); returns the count."""
    if n is None:
        n = cpu_cores()
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Within the block, torch uses `n` CPU threads; the previous count comes back after, even on error."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def memory_total_gb() -> float | None:
    """Physical memory in GiB (None where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def environment_report() -> dict:
    """Versions, device and machine size: the facts to paste into a bug report."""
    import timm
    import torchvision
    dev = pick_device()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device": str(dev),
        "cpu_threads": torch.get_num_threads(),
        "memory_gb": round(memory_total_gb() or 0, 1),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = props.name
        report["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    return report
