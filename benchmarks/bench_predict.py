"""transfer predict: images/s at 512 px through PyTorch and through ONNX Runtime, the same model, side by side.

Each round scores the same real DAGM Class1/Test images (decoded once, ``--images``) as ``transfer predict``
does, from raw pixels to the table's row (``transfer.predict.predict_pixels``: resize and normalise, the forward
pass, the map upsampled, binarised and split into defects), in batches of ``--batch-size``:

* ``pytorch``: the segdec model on ``--device``;
* ``onnxruntime``: the same model exported by ``transfer.export.export_onnx``, ONNX Runtime on the CPU (the
  CUDA provider where onnxruntime-gpu is installed and ``--device`` is cuda); with ``--threads`` it gets as many
  intra-op threads as torch.

The ratio ``onnxruntime / pytorch`` (median of the per-round ratios of seconds) is measured in one run. Model:
``--arch`` segdec cut at ``--output-stride``, ImageNet weights where available offline (efficientnet_lite0);
weights do not change the speed. ``--quick``: small_cnn, two images, one round.

    python benchmarks/bench_predict.py
    python benchmarks/bench_predict.py --device cuda --images 64 --batch-size 16
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import DAGM_CLASS1_TEST, finish, interleaved, median_ratio, parser, setup, stats, table

from dataonomy.datasets import open_image
from transfer.data import DefectData, defect_fold
from transfer.export import add_metadata, export_onnx
from transfer.heads import get_head
from transfer.models import model_spec
from transfer.predict import ModelInput, OnnxPredictor, TorchPredictor, predict_pixels
from transfer.segdec import build_segdec


def main(argv: list[str] | None = None) -> dict:
    p = parser("predict", __doc__.split("\n\n")[0], repeats=3)
    p.add_argument("--arch", default="efficientnet_lite0", help="segdec trunk (transfer.models)")
    p.add_argument("--output-stride", type=int, default=8, help="where the trunk is cut")
    p.add_argument("--images", type=int, default=16, help="DAGM images per round")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--dagm", type=Path, default=DAGM_CLASS1_TEST, help="DAGM split folder with Label/")
    args = p.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.arch, args.images, args.batch_size = "small_cnn", 2, 2

    fold = defect_fold(DefectData(str(args.dagm)), "all")
    pixels = [np.asarray(open_image(s.path, "RGB")) for s in fold.samples[: args.images]]
    spec = model_spec(args.arch)
    init = "imagenet" if args.arch == "efficientnet_lite0" else "scratch"
    torch.manual_seed(0)
    model = build_segdec(args.arch, init, args.output_stride).eval()
    head = get_head("segdec")
    model_input = ModelInput(tuple(spec.mean), tuple(spec.std), None)
    torch_predictor = TorchPredictor(model.to(device), head, model_input, 0.5, {}, str(device))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "segdec.onnx"
        export_onnx(model.cpu(), path, tuple(pixels[0].shape[:2]), head=head)
        add_metadata(
            path,
            {"transfer.head": "segdec", "transfer.threshold": 0.5, "transfer.mean": list(spec.mean),
             "transfer.std": list(spec.std), "transfer.input_size": None},
        )  # fmt: skip
        model.to(device)
        # With --threads, ONNX Runtime gets as many intra-op threads as torch: like against like.
        onnx_predictor = OnnxPredictor(path, str(device), threads=args.threads)
        batches = [pixels[b : b + args.batch_size] for b in range(0, len(pixels), args.batch_size)]

        def run(predictor):
            return lambda: [predict_pixels(predictor, batch, 0.5) for batch in batches]

        variants = {"pytorch": run(torch_predictor), "onnxruntime": run(onnx_predictor)}
        times = interleaved(variants, args.repeats, device)
        providers = onnx_predictor.session.get_providers()
    n = len(pixels)
    results = {
        "arch": args.arch,
        "init": init,
        "output_stride": args.output_stride,
        "images": n,
        "image_size": list(pixels[0].shape[:2]),
        "batch_size": args.batch_size,
        "onnx_providers": providers,
    }
    for name in variants:
        results[name] = {**stats(times[name]), "images_per_s": n / float(np.median(times[name]))}
    results["onnxruntime_over_pytorch_seconds"] = median_ratio(times["onnxruntime"], times["pytorch"])
    rows = [[name, results[name]["images_per_s"], results[name]["median_s"]] for name in variants]
    text = (
        f"predict on {device} (ONNX Runtime: {', '.join(providers)}): {n} DAGM images of "
        f"{results['image_size']}, {args.arch} segdec at stride {args.output_stride}, batch {args.batch_size}; "
        f"median of {args.repeats} interleaved rounds; onnxruntime / pytorch seconds "
        f"{results['onnxruntime_over_pytorch_seconds']:.3g}\n"
        + table(["runtime", "images/s", "seconds per round"], rows)
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    return finish("predict", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
