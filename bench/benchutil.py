"""
Helpers shared by the benchmarks under bench/.
"""

from __future__ import annotations


def cpuModel() -> str:
    """
    The CPU model from /proc/cpuinfo, or "" where there is none.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
