"""Feature extraction throughput (images/s): the product's pipeline against a plain one-image-at-a-time baseline.

Both embed the same images with the same network weights and return the same thing (pooled penultimate
features and the 1000 ImageNet logits of every image), in the same run, interleaved round by round:

* pipeline: ``dataonomy.features.extract_features(backbone, dataset, batch_size, num_workers)`` as
  ``dataonomy features`` runs it: loader workers decode, resize and crop to uint8 (pinned memory on CUDA),
  batches of ``--batch-size``, normalisation on the device, channels-last everywhere, float16 autocast on CUDA
  (float32 on a CPU, where the forward pass also runs in chunks of ``CPU_FORWARD_CHUNK`` images to stay in
  cache), the next batch queued before the last is handed over;
* baseline: for each image in turn, read it, apply the backbone's float preprocessing (``backbone.transform``),
  move it to the device, one float32 forward pass of a contiguous-layout copy of the network, features caught by
  the same hook, results copied back to the host.

The images: real DAGM Class1/Test (512x512 gray PNG, read as RGB) and the Tiny ImageNet subset (64x64 JPEG),
``--images`` of each, spread evenly over the folder. Backbones: ``efficientnet_lite0`` with its offline ImageNet
weights and ``inception_v3`` (the default backbone; ``--weights none`` seeded random weights, since its ImageNet
weights are not available offline; throughput does not depend on the weights' values). The JSON also records
how far the pipeline's features are from the baseline's (float16 on CUDA makes them differ slightly), as the
largest difference relative to the largest feature (Inception V3's random weights give features of about 1e11,
which float16 autocast cannot hold: expect inf there on CUDA with ``--weights none``).

    python benchmarks/bench_features.py
    python benchmarks/bench_features.py --device cuda --images 1024 --batch-size 128
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import (
    DAGM_CLASS1_TEST,
    TINY_IMAGENET,
    finish,
    interleaved,
    median_ratio,
    parser,
    setup,
    stats,
    table,
)

from dataonomy.backbones import CPU_FORWARD_CHUNK, get_backbone, get_backbone_spec
from dataonomy.datasets import get_dataset
from dataonomy.features import default_num_workers, extract_features


def pipeline_features(backbone, dataset, indices, batch_size: int, num_workers: int) -> np.ndarray:
    """The product's extraction of ``dataset[indices]``: features (N, D) float32 in ``indices`` order."""
    batches = list(extract_features(backbone, dataset, batch_size, num_workers, indices=indices))
    return np.concatenate([b.features for b in batches])


class PlainExtractor:
    """The baseline: one image at a time, float32, contiguous layout, no loader processes."""

    def __init__(self, backbone, device: torch.device):
        self.model = copy.deepcopy(backbone.model).float().to(device, memory_format=torch.contiguous_format)
        self.model.eval()
        self.transform = backbone.transform
        self.device = device
        self.classifier = self.model.get_submodule(get_backbone_spec(backbone.name).classifier)

    def __call__(self, dataset, indices) -> np.ndarray:
        rows = []
        for index in indices:
            image, _ = dataset[int(index)]
            x = self.transform(image)[None].to(self.device)
            caught = []
            hook = self.classifier.register_forward_pre_hook(lambda _m, args, c=caught: c.append(args[0]))
            try:
                with torch.inference_mode():
                    logits = self.model(x)
            finally:
                hook.remove()
            rows.append(caught[0].flatten(1).float().cpu().numpy())
            logits.float().cpu()
        return np.concatenate(rows)


def open_images(name: str, args):
    """(dataset without transform, indices of ``--images`` images spread evenly over it)."""
    if name == "dagm":
        dataset = get_dataset("dagm", args.dagm)
    elif name == "imagenet":
        dataset = get_dataset("imagenet", args.tiny_imagenet, split="train")
    else:
        raise SystemExit(f"--datasets: unknown dataset '{name}' (expected dagm or imagenet)")
    count = min(args.images, len(dataset))
    return dataset, np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(np.int64))


def main(argv: list[str] | None = None) -> dict:
    p = parser("features", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument("--backbones", default="efficientnet_lite0,inception_v3", help="backbones to time")
    p.add_argument(
        "--weights",
        default="efficientnet_lite0=imagenet,inception_v3=none",
        help="weights per backbone (name=imagenet|none|PATH); unlisted backbones use imagenet",
    )
    p.add_argument(
        "--datasets", default="dagm,imagenet", help="image sets: dagm (512x512), imagenet (Tiny, 64x64)"
    )
    p.add_argument("--images", type=int, default=64, help="images per dataset (spread evenly over it)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="pipeline batch size (dataonomy features default)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="pipeline loader workers (default: the product's)"
    )
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="DAGM images (one split folder)")
    p.add_argument("--tiny-imagenet", type=Path, default=TINY_IMAGENET, help="Tiny ImageNet root")
    args = p.parse_args(argv)
    device = setup(args)
    backbones = [b for b in args.backbones.split(",") if b]
    datasets = [d for d in args.datasets.split(",") if d]
    if args.quick:
        backbones, datasets, args.images, args.batch_size = ["efficientnet_lite0"], ["dagm"], 2, 2
        args.workers = 0 if args.workers is None else args.workers
    weights = dict(item.split("=", 1) for item in args.weights.split(",") if item)
    workers = default_num_workers(device) if args.workers is None else args.workers

    results, rows = {}, []
    for name in backbones:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "random weights": chosen on purpose here
            backbone = get_backbone(name, weights.get(name, "imagenet"), device=device, progress=False)
        plain = PlainExtractor(backbone, device)
        for data in datasets:
            dataset, indices = open_images(data, args)
            # Warm-up on a few images: workers' first start, cuDNN's kernel choice, allocator.
            pipeline_features(backbone, dataset, indices[: args.batch_size], args.batch_size, workers)
            plain(dataset, indices[:2])
            out = {}

            def pipeline(bb=backbone, ds=dataset, ix=indices, out=out):
                out["pipeline"] = pipeline_features(bb, ds, ix, args.batch_size, workers)

            def baseline(ex=plain, ds=dataset, ix=indices, out=out):
                out["baseline"] = ex(ds, ix)

            times = interleaved(
                {"pipeline": pipeline, "baseline": baseline}, args.repeats, device, warmup=False
            )
            a, b = out["pipeline"], out["baseline"]  # from the last round
            n = len(indices)
            speedup = median_ratio(times["baseline"], times["pipeline"])
            record = {
                "images": n,
                "image_size": list(np.asarray(dataset[int(indices[0])][0]).shape[:2]),
                "input_size": backbone.image_size,
                "pipeline": {
                    **stats(times["pipeline"]),
                    "images_per_s": n / float(np.median(times["pipeline"])),
                    "precision": backbone.precision,
                    "channels_last": True,
                    "cpu_forward_chunk": None if device.type == "cuda" else CPU_FORWARD_CHUNK,
                    "batch_size": args.batch_size,
                    "workers": workers,
                },
                "baseline": {
                    **stats(times["baseline"]),
                    "images_per_s": n / float(np.median(times["baseline"])),
                },
                "speedup": speedup,
                "features_max_abs_diff": float(np.abs(a - b).max()),
                "features_max_abs": float(np.abs(b).max()),
                "features_relative_diff": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)),
            }
            results[f"{name}/{data}"] = record
            rows.append(
                [
                    name,
                    f"{data} ({record['image_size'][0]}x{record['image_size'][1]} -> {backbone.image_size})",
                    n,
                    record["pipeline"]["images_per_s"],
                    record["baseline"]["images_per_s"],
                    f"{speedup:.2f}x",
                ]
            )
    text = (
        f"Feature extraction on {device}: pipeline (batch {args.batch_size}, {workers} workers, "
        f"{'float16 autocast, channels-last' if device.type == 'cuda' else f'float32, channels-last, forward in chunks of {CPU_FORWARD_CHUNK}'}) "
        "vs one image at a time "
        f"(float32, contiguous); median of {args.repeats} interleaved rounds\n"
        + table(
            [
                "backbone",
                "images",
                "n",
                "pipeline img/s",
                "baseline img/s",
                "speed-up (median of round ratios)",
            ],
            rows,
        )
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    config.update(backbones=backbones, datasets=datasets, weights=weights, workers=workers)
    return finish("features", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
