"""AHP normalisation (dataonomy.ahp.ahp_normalize): time at the issue's size and how it grows.

Inputs: per-image scores like the ``softmax`` affinity's, ``softmax(scale * z)`` over the source classes with
z ~ N(0, 1) seeded, float32, for ``--targets`` target classes of ``--images`` images each. The timed call is
``ahp_normalize(scores, labels, targets, device=...)`` with the module's default tiles and threads: per-image
tournaments for every target class (O(N S^2)), then the principal eigenvector of each S x S comparison matrix
(power iteration, O(S^2) per step).

Growth: the same call with one size varied at a time (images per target, source classes, target classes), the
others at their defaults; the table gives each size's time relative to the default size and the fitted
log-log slope (1 = linear, 2 = quadratic). One target class at the default size is also split into its two
steps (tournaments, eigenvector).

    python benchmarks/bench_ahp.py                       # 1000 sources x 10 targets x 500 images
    python benchmarks/bench_ahp.py --device cuda --repeats 5
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import finish, interleaved, parser, setup, stats, table, time_call

from dataonomy.ahp import ahp_normalize, comparison_matrix, principal_eigenvector, win_fractions


def synthetic_scores(
    num_targets: int, images: int, sources: int, scale: float, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (T * N, S) float32 rows summing to 1, labels (T * N,)) on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_targets * images, sources, generator=generator) * scale
    labels = torch.arange(num_targets).repeat_interleave(images)
    return torch.softmax(logits, dim=1).to(device), labels.to(device)


def loglog_slope(sizes, seconds) -> float | None:
    """Least-squares slope of log(time) against log(size): the exponent of the growth."""
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def parse_sizes(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    p = parser("ahp", __doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=1000, help="source classes S")
    p.add_argument("--targets", type=int, default=10, help="target classes T")
    p.add_argument("--images", type=int, default=500, help="images per target class N")
    p.add_argument("--grow-images", default="125,250,500,1000", help="images per target to time (growth)")
    p.add_argument("--grow-sources", default="250,500,1000,2000", help="source classes to time (growth)")
    p.add_argument("--grow-targets", default="1,5,10,20", help="target classes to time (growth)")
    p.add_argument("--scale", type=float, default=2.0, help="logit scale of the synthetic softmax scores")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scores")
    args = p.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.sources, args.targets, args.images = 100, 2, 20
        args.grow_images, args.grow_sources, args.grow_targets = "10,20", "50,100", "1,2"

    def run(targets: int, images: int, sources: int):
        scores, labels = synthetic_scores(targets, images, sources, args.scale, args.seed, device)
        return lambda: ahp_normalize(scores, labels, targets, device=device)

    # The size.
    main_call = run(args.targets, args.images, args.sources)
    main_times = interleaved({"ahp": main_call}, args.repeats, device)["ahp"]
    priorities, ratios = main_call()
    main_result = {
        "targets": args.targets,
        "images_per_target": args.images,
        "sources": args.sources,
        **stats(main_times),
        "seconds_per_target": float(np.median(main_times)) / args.targets,
        "consistency_ratio_median": float(np.median(ratios)),
        "rows_sum_to_one": bool(np.allclose(priorities.sum(1), 1.0)),
    }

    # One target class split into its two steps.
    scores, _ = synthetic_scores(1, args.images, args.sources, args.scale, args.seed, device)
    steps = {"tournaments": [], "eigenvector": []}
    principal_eigenvector(comparison_matrix(win_fractions(scores, device=device)))  # warm-up
    iterations = None
    for _ in range(args.repeats):
        seconds, win = time_call(lambda: win_fractions(scores, device=device), device)
        steps["tournaments"].append(seconds)
        seconds, pair = time_call(lambda: principal_eigenvector(comparison_matrix(win)), device)  # noqa: B023
        steps["eigenvector"].append(seconds)
        iterations, method = pair.iterations, pair.method
    breakdown = {name: stats(t) for name, t in steps.items()}
    breakdown["power_iterations"], breakdown["method"] = iterations, method

    # Growth, one axis at a time; the timings of one axis are interleaved across its sizes.
    axes = {
        "images_per_target": parse_sizes(args.grow_images),
        "sources": parse_sizes(args.grow_sources),
        "targets": parse_sizes(args.grow_targets),
    }
    growth = {}
    for axis, sizes in axes.items():
        calls = {}
        for size in sizes:
            shape = {"targets": args.targets, "images_per_target": args.images, "sources": args.sources}
            shape[axis] = size
            calls[str(size)] = run(shape["targets"], shape["images_per_target"], shape["sources"])
        times = interleaved(calls, args.repeats, device, warmup=False)
        medians = [float(np.median(times[str(s)])) for s in sizes]
        growth[axis] = {
            "sizes": sizes,
            "median_s": medians,
            "runs_s": [times[str(s)] for s in sizes],
            "loglog_slope": loglog_slope(sizes, medians),
        }

    rows = [
        [
            "default",
            f"{args.targets}x{args.images}x{args.sources}",
            main_result["median_s"],
            main_result["seconds_per_target"],
            "",
        ]
    ]
    for axis, g in growth.items():
        for i, (size, seconds) in enumerate(zip(g["sizes"], g["median_s"], strict=True)):
            last = i == len(g["sizes"]) - 1 and g["loglog_slope"] is not None
            rows.append([axis, size, seconds, "", f"{g['loglog_slope']:.2f}" if last else ""])
    text = (
        f"AHP on {device} (median of {args.repeats})\n"
        + table(["what", "size (T x N x S)", "seconds", "s / target", "log-log slope"], rows)
        + "\n\none target, N={}, S={}: tournaments {:.4g} s, eigenvector {:.4g} s ({} {} iterations)".format(
            args.images,
            args.sources,
            breakdown["tournaments"]["median_s"],
            breakdown["eigenvector"]["median_s"],
            iterations,
            method,
        )
    )
    config = {k: v for k, v in vars(args).items() if k not in ("out",)}
    results = {"default_size": main_result, "one_target_steps": breakdown, "growth": growth}
    return finish("ahp", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
