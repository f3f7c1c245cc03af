"""Smoke runs of the speed benchmarks (benchmarks/bench_*.py --quick) on real data: each writes the JSON that
docs/benchmarks.md quotes, with its device, and compares like with like. No timing is asserted."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """Import a benchmark script by name (they import their sibling ``_common``), restoring torch's threads."""
    sys.path.insert(0, str(BENCHMARKS))
    threads = torch.get_num_threads()
    try:
        yield lambda name: importlib.import_module(f"bench_{name}")
    finally:
        sys.path.remove(str(BENCHMARKS))
        torch.set_num_threads(threads)


def run(bench, name, tmp_path, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    # One thread: on a busy shared CPU, torch's two spinning threads can stall each other (docs/benchmarks.md).
    payload = bench(name).main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out), *extra])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(payload))
    assert written["benchmark"] == name and written["quick"] is True
    assert written["environment"]["device"] == "cpu" and written["environment"]["device_name"]
    return written["results"]


def positive(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_ahp(bench, tmp_path, dagm_class1_test):
    results = run(bench, "ahp", tmp_path)
    assert results["default_size"]["rows_sum_to_one"]
    assert positive(results["default_size"]["median_s"])
    for axis in ("images_per_target", "sources", "targets"):
        growth = results["growth"][axis]
        assert len(growth["median_s"]) == len(growth["sizes"]) == 2
        assert math.isfinite(growth["loglog_slope"])


def test_bip(bench, tmp_path):
    results = run(bench, "bip", tmp_path)
    scale = results.pop("imagenet21k_scale")
    (record,) = results.values()
    assert record["status"] == "optimal" and record["bip_selection_violations"] == 0
    # Greedy can only do as well as the programme where it breaks a constraint.
    assert record["greedy"]["objective_ratio"] <= 1 + 1e-9 or record["greedy"]["violations"] > 0
    assert positive(record["solve_selection"]["median_s"])
    # The y-only programme and METHOD.md's serve-variable form, side by side: the same optimum.
    y, xy = scale["2/y"], scale["2/xy"]
    assert y["status"] == xy["status"] == "optimal" and y["objective"] == pytest.approx(
        xy["objective"], rel=1e-9
    )
    assert xy["variables"] == 3 * y["variables"] and positive(xy["xy_over_y"])


def test_rootcause(bench, tmp_path, dagm_class1_test):
    results = run(bench, "rootcause", tmp_path, "--dagm", str(dagm_class1_test))
    assert results["image_size"] == [512, 512]
    stream = results["stream"]
    # 12 images, window 5, stride 4: windows start at 0, 4 and (flush with the end) 7.
    assert stream["windows"] == 3 and positive(stream["images_per_s"])
    assert positive(results["window"]["median_s"])


def test_heatmap(bench, tmp_path, dagm_class1_test):
    results = run(bench, "heatmap", tmp_path, "--dagm", str(dagm_class1_test))
    record = results["small_cnn"]
    assert record["loop"]["ratio_to_loop"] == 1.0
    assert positive(record["batched"]["ratio_to_loop"]) and positive(record["dense"]["ratio_to_loop"])
    # The same heatmap, computed in batches of 256 (the default) and of 32.
    assert record["batched_vs_loop"]["max_abs_diff"] < 1e-5
    assert record["batched_32_vs_loop"]["max_abs_diff"] < 1e-5
    assert record["loop_heat_std"] > 0


def test_features(bench, tmp_path, dagm_class1_test):
    results = run(bench, "features", tmp_path, "--dagm", str(dagm_class1_test))
    record = results["efficientnet_lite0/dagm"]
    assert record["images"] == 2 and record["image_size"] == [512, 512]
    assert positive(record["pipeline"]["images_per_s"]) and positive(record["baseline"]["images_per_s"])
    # On a CPU both run float32: the pipeline and the baseline embed the images identically.
    assert record["features_max_abs_diff"] < 1e-3 * max(1.0, record["features_max_abs"])


def test_finetune(bench, tmp_path, dagm_class1_test):
    results = run(bench, "finetune", tmp_path, "--dagm", str(dagm_class1_test))
    record = results["small_cnn"]
    assert record["batch_size"] == 4 and record["input_size"] == 32 and record["examples"] == "images"
    assert record["amp_used"] is False and record["channels_last_used"] is False
    assert len(record["step_time_runs_s"]) == 1


def test_segdec(bench, tmp_path, dagm_class1_test):
    results = run(bench, "segdec", tmp_path, "--dagm", str(dagm_class1_test))
    record = results["small_cnn"]
    assert record["image_size"] == [128, 128] and record["images"] == 1 and record["output_stride"] == 8
    for name in ("train", "infer", "segmap", "patch_loop", "patch_batched"):
        assert positive(record[name]["images_per_s"]) and len(record[name]["runs_s"]) == 1
    assert positive(record["patch_loop_over_segmap"])


def test_bad_option_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench("ahp").main(["--repeats", "0", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="--device cuda:7"):
        bench("ahp").main(["--device", "cuda:7", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_predict(bench, tmp_path, dagm_class1_test):
    results = run(bench, "predict", tmp_path, "--dagm", str(dagm_class1_test))
    assert results["image_size"] == [512, 512] and results["images"] == 2
    assert positive(results["pytorch"]["images_per_s"]) and positive(results["onnxruntime"]["images_per_s"])
    assert positive(results["onnxruntime_over_pytorch_seconds"])
