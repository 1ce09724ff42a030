"""What this board is and can run, announced in the retained birth message.

Runtimes are found without importing them (the agent stays small): see device_agent.backends. Which
delegates and execution providers actually load is tried in a short-lived process
(device_agent.probe); where that probe cannot run, the delegates whose libraries are present are
listed instead.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import psutil

from device_agent import AGENT_VERSION
from device_agent.backends import discover
from shared.messages import Birth, RuntimeInfo

logger = logging.getLogger(__name__)

# Shared libraries whose presence means a TFLite delegate can be used on this board.
_DELEGATE_LIBS = {
    "edgetpu": ("libedgetpu.so.1",),
    "gpu": ("libtensorflowlite_gpu_delegate.so",),
    "hexagon": ("libhexagon_interface.so",),
}
_LIB_DIRS = (
    "/usr/lib",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/local/lib",
)


def _short(text: str) -> str:
    return text.strip()[:128]


def cpu_model() -> str:
    """The CPU name from /proc/cpuinfo ("model name", or the board "Model" line on a Pi)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields and value.strip():
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if key in fields:
            return _short(fields[key])
    return _short(platform.processor() or platform.machine() or "unknown")


# /proc/cpuinfo flags (x86 "flags", Arm "Features") that decide which inference kernels run: SIMD
# width, fused multiply-add, int8 dot products and matrix extensions, half-precision arithmetic.
INFERENCE_FLAGS = frozenset(
    (
        # x86
        "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
        "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16",
        # Arm
        "neon", "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme",
    )
)  # fmt: skip


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The inference-relevant CPU flags of /proc/cpuinfo (sorted; empty where it has none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found.update(flag for flag in value.split() if flag in INFERENCE_FLAGS)
    return sorted(found)


def cpu_quota(proc_cgroup: str | None = None, root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time this process's cgroup allows (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``); None without a quota or where it cannot be read."""
    try:
        text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.strip().lstrip("/")
        try:
            if controllers == "":
                quota, period = (root / relative / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    return round(int(quota) / int(period), 3)
            elif "cpu" in controllers.split(","):
                base = root / ("cpu" if (root / "cpu").is_dir() else controllers)
                quota_us = int((base / relative / "cpu.cfs_quota_us").read_text())
                period_us = int((base / relative / "cpu.cfs_period_us").read_text())
                if quota_us > 0 and period_us > 0:
                    return round(quota_us / period_us, 3)
        except (OSError, ValueError):
            continue
    return None


def delegates() -> list[str]:
    """What loads, from the probe process; the delegate libraries present where it fails."""
    from device_agent.probe import probe_delegates

    probed = probe_delegates()
    return probed if probed is not None else library_delegates()


def library_delegates() -> list[str]:
    found = []
    for name, libs in _DELEGATE_LIBS.items():
        if any(Path(d, lib).exists() for d in _LIB_DIRS for lib in libs):
            found.append(name)
    return found


def runtimes() -> list[RuntimeInfo]:
    seen: dict[str, RuntimeInfo] = {}
    for backend in discover().values():
        info = backend.probe()
        if info is not None:
            seen[info.name] = info
    return list(seen.values())


def birth(tags: dict[str, str], active_sha256: str | None = None) -> Birth:
    return Birth(
        agent_version=AGENT_VERSION,
        arch=_short(platform.machine() or "unknown"),
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 1,
        ram_mb=round(psutil.virtual_memory().total / (1024 * 1024), 1),
        os=_short(platform.platform()),
        python=_short(platform.python_version()),
        runtimes=runtimes(),
        delegates=delegates(),
        tags=tags,
        active_sha256=active_sha256,
        cpu_flags=cpu_flags(),
        cpu_quota=cpu_quota(),
    )
