"""Patch heatmaps (transfer.localize): images/s of ``loop``, ``batched`` and ``dense`` on 512x512 DAGM images.

The three ways compute the heatmap of the same patch grid (``--patch-size`` / ``--stride``, default 64 / 32:
15 x 15 = 225 patches per 512x512 image) for the same images with the same model, interleaved round by round;
speed is reported as images/s and as a ratio to ``loop`` (median of the per-round ratios):

* ``loop``: ``heatmap_loop``, one patch per forward pass (the reference);
* ``batched``: ``heatmap_batched``, patches gathered from an ``unfold`` view, ``--batch-size`` per pass (256,
  the function's default); every further size in ``--batch-size`` (default 32) is timed too, as ``batched_<n>``;
* ``dense``: ``heatmap_dense``, the trunk once per image, every patch pooled from its feature map.

Models: ``transfer.models.build_model(arch, 2, init)`` in eval mode, seeded: ``small_cnn`` (the CPU demo's patch
model) from its own initialisation, ``efficientnet_lite0`` with its offline ImageNet trunk (with random weights
its patch probabilities are all equal, which would make the agreement figures blind; the speed does not depend
on the weights), both with a new two-class head and at the patch's own size (``--input-size`` resizes patches first, as for a model trained at a fixed size). Images:
real DAGM Class1/Test PNGs, gray replicated to 3 channels, normalised with the architecture's mean/std. The JSON
also records how closely ``batched`` and ``dense`` agree with ``loop`` on these images.

    python benchmarks/bench_heatmap.py
    python benchmarks/bench_heatmap.py --device cuda --images 32 --archs small_cnn,efficientnet_lite0,inception_v3 \
        --input-size 299        # (inception_v3 needs inputs of at least 75 pixels)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from _common import DAGM_CLASS1_TEST, finish, interleaved, median_ratio, parser, setup, stats, table
from PIL import Image

from transfer.localize import agreement, heatmap_batched, heatmap_dense, heatmap_loop, patch_grid
from transfer.models import build_model, model_spec


def dagm_batch(paths: list[Path], mean, std) -> torch.Tensor:
    """(N, 3, H, W) float32: gray images replicated to RGB, scaled to [0, 1], normalised with mean/std."""
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths])
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def main(argv: list[str] | None = None) -> dict:
    p = parser("heatmap", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument(
        "--archs", default="small_cnn,efficientnet_lite0", help="patch classifiers (transfer.models)"
    )
    p.add_argument("--images", type=int, default=4, help="DAGM images per round")
    p.add_argument("--patch-size", type=int, default=64, help="patch side in pixels")
    p.add_argument("--stride", type=int, default=32, help="step between patches")
    p.add_argument(
        "--batch-size",
        default="256,32",
        help="patches per pass of the batched method; the first is 'batched', the others 'batched_<n>'",
    )
    p.add_argument("--input-size", type=int, default=None, help="resize patches to this side (default: keep)")
    p.add_argument(
        "--init",
        default="auto",
        help="scratch, imagenet, or auto: imagenet where the weights are available offline (efficientnet_lite0)",
    )
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="folder of DAGM images (*.PNG)")
    args = p.parse_args(argv)
    device = setup(args)
    archs = [a for a in args.archs.split(",") if a]
    batch_sizes = [int(b) for b in str(args.batch_size).split(",") if b]
    if args.quick:
        archs, args.images, args.patch_size, args.stride = ["small_cnn"], 1, 256, 256

    files = sorted(args.dagm.glob("*.PNG"))[: args.images]
    if not files:
        raise SystemExit(f"--dagm {args.dagm}: no *.PNG images")
    results, rows = {}, []
    for arch in archs:
        spec = model_spec(arch)
        init = (
            args.init if args.init != "auto" else ("imagenet" if arch == "efficientnet_lite0" else "scratch")
        )
        torch.manual_seed(0)
        model = build_model(arch, 2, init).to(device).eval()
        images = dagm_batch(files, spec.mean, spec.std).to(device)
        height, width = images.shape[-2:]
        ys, xs = patch_grid(height, width, args.patch_size, args.stride)
        common = {"patch_size": args.patch_size, "stride": args.stride, "input_size": args.input_size}
        heat = {}

        def run(method, fn, **extra):
            def call():
                heat[method] = fn(model, images, device=device, **common, **extra)  # noqa: B023

            return call

        variants = {
            "loop": run("loop", heatmap_loop),
            "batched": run("batched", heatmap_batched, batch_size=batch_sizes[0]),
            **{f"batched_{b}": run(f"batched_{b}", heatmap_batched, batch_size=b) for b in batch_sizes[1:]},
            "dense": run("dense", heatmap_dense),
        }
        # Warm-up on one image (kernel choice, allocator); the loop is too slow to repeat untimed.
        for method in ("batched", "dense"):
            {"batched": heatmap_batched, "dense": heatmap_dense}[method](
                model, images[:1], device=device, **common
            )
        times = interleaved(variants, args.repeats, device, warmup=False)
        n = len(files)
        record = {
            "images": n,
            "image_size": [height, width],
            "patches_per_image": len(ys) * len(xs),
            "init": init,
            **common,
            "batch_size": batch_sizes[0],
        }
        for method in variants:
            record[method] = {
                **stats(times[method]),
                "images_per_s": n / float(np.median(times[method])),
                "ratio_to_loop": median_ratio(times["loop"], times[method]),
            }
        for method in variants:
            if method != "loop":
                record[f"{method}_vs_loop"] = agreement(heat["loop"], heat[method])
        record["loop_heat_std"] = float(heat["loop"].std())  # 0 would make the agreement figures meaningless
        results[arch] = record
        for method in variants:
            label = (
                method if not method.startswith("batched") else f"batched ({method[8:] or batch_sizes[0]})"
            )
            rows.append(
                [
                    arch,
                    label,
                    record[method]["images_per_s"],
                    f"{record[method]['ratio_to_loop']:.3g}x",
                    record[f"{method}_vs_loop"]["max_abs_diff"] if method != "loop" else "",
                ]
            )
    text = (
        f"Heatmaps on {device}: {len(files)} DAGM images, patch {args.patch_size}, stride {args.stride}"
        f" ({results[archs[0]]['patches_per_image']} patches/image), input size {args.input_size or 'patch'};"
        f" median of {args.repeats} interleaved rounds\n"
        + table(["model", "method", "images/s", "speed vs loop", "max |heat - loop heat|"], rows)
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    config["archs"] = archs
    return finish("heatmap", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
