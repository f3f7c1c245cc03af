"""Root-cause analysis (transfer.rootcause): time per window of 30 512x512 images, and for a 1000-image stream.

Images: real DAGM 2007 Class1/Test PNGs (512x512, 8-bit gray), decoded once into memory as uint8 before timing
(decoding is timed separately, per image). The stream is the first ``--stream`` images of the folder in name
order, cycled when the folder holds fewer (Class1/Test has 575: the 1000-image stream reads it 1.7 times).

Timed:

* one window: ``find_common_defects(stack, device=...)`` on ``--window`` consecutive images (a (w, H, W) uint8
  stack), for ``--windows`` different windows per round; the figure is the median time per window;
* its steps on the same windows: Sobel gradients, the two window medians, the mask (robust z, morphology);
* the stream: ``list(stream_common_defects(images, window, stride, device=...))`` over the whole sequence, as
  ``transfer rootcause`` runs it (ring buffer of gradients; one analysis every ``--stride`` images).

    python benchmarks/bench_rootcause.py
    python benchmarks/bench_rootcause.py --stream 1000 --window 30 --stride 5 --repeats 3
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from _common import DAGM_CLASS1_TEST, finish, interleaved, parser, setup, stats, table, time_call
from PIL import Image

from transfer.rootcause import (
    common_defect_mask,
    find_common_defects,
    image_gradients,
    stream_common_defects,
    window_median,
)


def read_gray(paths: list[Path]) -> list[np.ndarray]:
    """8-bit grayscale images as (H, W) uint8 arrays."""
    return [np.asarray(Image.open(p).convert("L")) for p in paths]


def main(argv: list[str] | None = None) -> dict:
    p = parser("rootcause", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="folder of DAGM images (*.PNG)")
    p.add_argument("--window", type=int, default=30, help="images per window")
    p.add_argument("--windows", type=int, default=5, help="different windows timed per round")
    p.add_argument("--stream", type=int, default=1000, help="images in the stream")
    p.add_argument("--stride", type=int, default=5, help="images between the starts of two stream windows")
    args = p.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.window, args.windows, args.stream, args.stride = 5, 1, 12, 4

    files = sorted(args.dagm.glob("*.PNG"))
    if not files:
        raise SystemExit(f"--dagm {args.dagm}: no *.PNG images")
    needed = max(args.stream, args.window * args.windows)
    decode_times, images = [], []
    for path in files[: min(needed, len(files))]:
        seconds, image = time_call(lambda path=path: read_gray([path])[0], torch.device("cpu"))
        decode_times.append(seconds)
        images.append(image)
    height, width = images[0].shape
    stream = [images[i % len(images)] for i in range(args.stream)]
    stacks = [np.stack(stream[i * args.window : (i + 1) * args.window]) for i in range(args.windows)]
    dev = None if device.type == "cpu" else device

    def windows():
        return [find_common_defects(stack, device=dev) for stack in stacks]

    def steps():
        seconds = {"gradients": 0.0, "medians": 0.0, "mask": 0.0}
        for stack in stacks:
            t, (gx, gy) = time_call(lambda stack=stack: image_gradients(stack, dev), device)
            seconds["gradients"] += t
            t, (mx, my) = time_call(lambda gx=gx, gy=gy: (window_median(gx), window_median(gy)), device)
            seconds["medians"] += t
            magnitude = torch.hypot(mx, my).cpu().numpy()
            t, _ = time_call(lambda m=magnitude: common_defect_mask(m), device)
            seconds["mask"] += t
        return seconds

    results_holder = {}

    def run_stream():
        results_holder["stream"] = list(
            stream_common_defects(iter(stream), args.window, args.stride, device=dev)
        )

    find_common_defects(
        stacks[0], device=dev
    )  # warm-up (CUDA context, allocator); the stream is not repeated
    times = interleaved({"windows": windows, "stream": run_stream}, args.repeats, device, warmup=False)
    step_rounds = [steps() for _ in range(args.repeats)]
    per_window = [t / args.windows for t in times["windows"]]
    step_stats = {
        name: stats([r[name] / args.windows for r in step_rounds])
        for name in ("gradients", "medians", "mask")
    }
    stream_results = results_holder["stream"]
    stream_median = float(np.median(times["stream"]))
    results = {
        "image_size": [height, width],
        "decode_png": {**stats(decode_times), "images": len(decode_times)},
        "window": {"images": args.window, "windows_per_round": args.windows, **stats(per_window)},
        "window_steps": step_stats,
        "stream": {
            "images": args.stream,
            "distinct_images": min(len(files), args.stream),
            "window": args.window,
            "stride": args.stride,
            "windows": len(stream_results),
            "windows_with_verdict_yes": sum(r.verdict for r in stream_results),
            **stats(times["stream"]),
            "images_per_s": args.stream / stream_median,
            "seconds_per_window": stream_median / len(stream_results),
        },
    }
    rows = [
        [f"decode one PNG ({height}x{width})", float(np.median(decode_times)), "", ""],
        [f"one window of {args.window} (find_common_defects)", float(np.median(per_window)), "", ""],
        *[[f"  step: {name}", s["median_s"], "", ""] for name, s in step_stats.items()],
        [
            f"stream of {args.stream} (window {args.window}, stride {args.stride})",
            stream_median,
            f"{results['stream']['images_per_s']:.4g}",
            f"{len(stream_results)} windows, {results['stream']['seconds_per_window']:.4g} s each",
        ],
    ]
    text = f"Root cause on {device} (median of {args.repeats})\n" + table(
        ["what", "seconds", "images/s", "notes"], rows
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    return finish("rootcause", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
