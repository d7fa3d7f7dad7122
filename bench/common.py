"""What every benchmark shares: the machine description and the results file."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cores = os.cpu_count() or 0
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        memory = "unknown memory"
    return f"{cores} cores, {memory}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.splitlines()
    # the results file itself changes as benchmarks append to it: that is not the code
    dirty = [line for line in changed if not line.endswith("bench/RESULTS.md")]
    return out.stdout.strip() + ("+changes" if dirty else "")


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def record(title: str, lines: Sequence[str]) -> None:
    """Print the figures and append them, stamped, to RESULTS.md."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = ["", f"### {title}", "", f"{stamp} · {machine()} · commit {commit()}", "", *lines, ""]
    text = "\n".join(block)
    print(text)
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by `make bench`; every figure is measured side by"
            " side with its baseline in the same run.\n\n"
        )
    with RESULTS.open("a") as out:
        out.write(text + "\n")
