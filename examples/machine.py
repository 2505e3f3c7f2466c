"""The machine that measured a figure, for the reports of the demo and the experiments."""
import os
import platform

import numpy as np


def describe():
    """``{"nproc", "cpu", "numpy", "python", "openblas_threads"}`` of this machine and process."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "numpy": np.__version__, "python": platform.python_version(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
