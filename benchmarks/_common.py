"""What every benchmark script shares: options, device description, interleaved timing, table and JSON.

Timing rules (docs/benchmarks.md): the variants being compared run side by side, one after another in every
round (ABAB...), so a slow spell of a shared machine hits all of them alike; each figure is the median over
``--repeats`` rounds, and ratios are medians of the per-round ratios. On CUDA every timed call ends with
``torch.cuda.synchronize()`` so the clock sees the work, not just its launch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from dataonomy.backbones import resolve_device
from dataonomy.errors import DataonomyError
from dataonomy.io import write_json

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
#: The real data beside the repository (as tests/conftest.py finds it).
SHARED_DATA = REPO.parent / "shared" / "data"
DAGM_CLASS1_TEST = SHARED_DATA / "dagm" / "Class1" / "Test"
TINY_IMAGENET = SHARED_DATA / "tiny-imagenet-200-subset"


def parser(name: str, description: str, repeats: int = 5) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --device, --repeats, --out, --quick."""
    p = argparse.ArgumentParser(
        prog=f"benchmarks/bench_{name}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    p.add_argument(
        "--repeats", type=int, default=repeats, help="timed rounds per measurement; the median is reported"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write the JSON results (default {RESULTS.relative_to(REPO)}/{name}.json, or"
        f" {name}-quick.json with --quick, so a smoke run never replaces measured figures)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU intra-op threads (default: torch's own choice); see docs/benchmarks.md on shared machines",
    )
    p.add_argument(
        "--quick", action="store_true", help="smallest sizes and one round (a smoke test, not a measurement)"
    )
    return p


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    """Where the numbers were measured: the device (GPU name on CUDA), CPU threads, load, library versions."""
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info


def git_revision() -> str | None:
    """The repository's commit, with ``+dirty`` when the working tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def setup(args: argparse.Namespace) -> torch.device:
    """Resolve ``--device`` and check ``--repeats``; returns the device."""
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1
    try:
        return resolve_device(args.device)
    except DataonomyError as exc:
        raise SystemExit(str(exc)) from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, ``repeats`` rounds, the variants run one after another in each round.

    ``warmup`` runs each variant once untimed first (lazy initialisation, kernel selection, caches).
    """
    if warmup:
        for fn in variants.values():
            fn()
            synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(time_call(fn, device)[0])
    return times


def stats(seconds: Sequence[float]) -> dict:
    """Median, min and max of repeated timings, and the timings themselves."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs_s": list(seconds),
    }


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (each pair measured side by side)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (markdown pipe syntax, so it can be pasted into docs/benchmarks.md)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in lines)) for i, h in enumerate(headers)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)])


def finish(name: str, args: argparse.Namespace, device: torch.device, config: dict, results: dict, text: str):
    """Print the table, write the JSON (atomically) and return what was written."""
    payload = {
        "benchmark": name,
        "command": " ".join(["python", f"benchmarks/bench_{name}.py", *sys.argv[1:]])
        if Path(sys.argv[0]).name == f"bench_{name}.py"
        else None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "quick": bool(args.quick),
        "repeats": args.repeats,
        "environment": device_info(device),
        "config": config,
        "results": results,
    }
    if args.out is None:
        args.out = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    print(text)
    write_json(args.out, payload)
    print(f"\nwrote {args.out}")
    return payload
