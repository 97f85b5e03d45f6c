"""Describe the machine a benchmark ran on (printed with every figure)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import onnxruntime as ort

        ortv = ort.__version__
    except ImportError:
        ortv = "-"
    return f"{cpu}; {cores} cores; {platform.system()} {platform.release()}; Python {platform.python_version()}; onnxruntime {ortv}"
