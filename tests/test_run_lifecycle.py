"""A run's life: unfinished runs refused as finished ones, resume/extend/restart, one-line errors for damaged
files, defaults that suit the init, progress lines without a terminal (issue 14: items 11, 12, 13, 15, 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataonomy.cli_utils import run_app
from dataonomy.errors import DataonomyError
from transfer import models
from transfer.checkpoint import last_checkpoint_path, load_model
from transfer.cli import app
from transfer.config import PretrainConfig, default_pretrain_lr
from transfer.training import Runtime, train, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CPU = Runtime(device="cpu")


def one_line_error(argv: list[str], capsys) -> str:
    code = run_app(app, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def manifest(tmp_path, tiny_imagenet) -> Path:
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:3]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]}))
    return path


def pretrain_config(manifest: Path, tiny_imagenet: Path, **overrides) -> PretrainConfig:
    wnids = [e["wnid"] for e in json.loads(manifest.read_text())["selected"]]
    options = dict(
        manifest=str(manifest), source_root=str(tiny_imagenet), wnids=wnids, arch="small_cnn", image_size=32,
        images_per_class=8, epochs=2, batch_size=8, lr=0.05, checkpoint_every=100, amp=False,
    )  # fmt: skip
    return PretrainConfig(**(options | overrides))


FINETUNE = [
    "finetune", "--base", "scratch", "--arch", "small_cnn", "--head", "classify", "--image-size", "32",
    "--batch-size", "16", "--steps-per-epoch", "2", "--device", "cpu", "--no-amp", "--seed", "1",
]  # fmt: skip


# --- item 11: unfinished runs --------------------------------------------------------------------------------------


def test_killed_finetune_is_refused_by_evaluate_and_export(dagm_class1_test, tmp_path, capsys):
    """kill -9 of a real `transfer finetune` after its first best.pt: evaluate and export refuse the run (one
    line naming --resume), export writes nothing; export --allow-incomplete takes it as it is."""
    run = tmp_path / "run"
    argv = [
        sys.executable, "-m", "transfer.cli", *FINETUNE, "--dagm", str(dagm_class1_test), "--test-fraction", "0.2",
        "--out", str(run), "--epochs", "1000", "--checkpoint-every", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not (run / "best.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (run / "best.pt").exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()

    err = one_line_error(["evaluate", "--model", str(run), "--device", "cpu"], capsys)
    assert "never finished" in err and "--resume" in err and f"--out {run}" in err
    assert not list(run.glob("eval_*"))
    onnx = tmp_path / "model.onnx"
    err = one_line_error(["export", "--model", str(run), "--onnx", str(onnx)], capsys)
    assert "never finished" in err and "--resume" in err and "--allow-incomplete" in err
    assert not onnx.exists()
    with pytest.raises(DataonomyError, match="never finished"):
        load_model(run / "best.pt")
    assert (
        run_app(
            app, ["export", "--model", str(run), "--onnx", str(onnx), "--images", "2", "--allow-incomplete"]
        )
        == 0
    )
    assert onnx.is_file()


def test_finished_run_resumed_to_more_epochs_drops_its_stale_evaluation(dagm_class1_test, tmp_path, capsys):
    """A finished run is evaluated, then extended with --resume --epochs: while it trains it is unfinished and
    its eval_test.json is gone; after, it is finished again and evaluates afresh."""
    run = tmp_path / "run"
    base = [*FINETUNE, "--dagm", str(dagm_class1_test), "--test-fraction", "0.2", "--out", str(run)]
    assert run_app(app, [*base, "--epochs", "1"]) == 0
    assert torch.load(run / "best.pt", weights_only=True)["status"] == "complete"
    assert run_app(app, ["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"]) == 0
    assert (run / "eval_test.json").is_file() and (run / "eval_test_pr.png").is_file()
    capsys.readouterr()
    # Extended by one epoch, stopped after one step of it: the old evaluation is gone, the run is unfinished.
    assert run_app(app, ["finetune", "--out", str(run), "--resume", "--epochs", "2", "--stop-after-steps", "1",
                         "--device", "cpu"]) == 0  # fmt: skip
    assert not list(run.glob("eval_*")) and not (run / "summary.json").exists()
    assert "never finished" in one_line_error(["evaluate", "--model", str(run), "--device", "cpu"], capsys)
    assert run_app(app, ["finetune", "--out", str(run), "--resume", "--device", "cpu"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs"] == 2
    assert summary["extensions"] == [{"step": 2, "from_epochs": 1, "epochs": 2}]
    assert torch.load(run / "best.pt", weights_only=True)["status"] == "complete"
    assert run_app(app, ["evaluate", "--model", str(run), "--device", "cpu", "--no-errors"]) == 0


def test_finetune_refuses_an_unfinished_pretrain_base_unless_asked(
    manifest, tiny_imagenet, dagm_class1_test, tmp_path, capsys
):
    base = tmp_path / "base"
    # Stopped after epoch 1 of 6 (3 steps an epoch): best.pt exists, the run is not finished.
    config = pretrain_config(manifest, tiny_imagenet, epochs=6)
    stopped = train(config, base, runtime=Runtime(device="cpu", stop_after_steps=4))
    assert stopped["status"] == "stopped" and (base / "best.pt").is_file()
    out = ["--dagm", str(dagm_class1_test), "--test-fraction", "0.2", "--epochs", "1", "--image-size", "32",
           "--batch-size", "16", "--steps-per-epoch", "1", "--head", "classify", "--device", "cpu", "--no-amp"]  # fmt: skip
    err = one_line_error(["finetune", "--base", str(base), *out, "--out", str(tmp_path / "ft")], capsys)
    assert f"--base {base}" in err and "never finished" in err and "--allow-incomplete-base" in err
    assert not (tmp_path / "ft").exists()
    code = run_app(
        app, ["finetune", "--base", str(base), *out, "--out", str(tmp_path / "ft"), "--allow-incomplete-base"]
    )
    assert code == 0, capsys.readouterr().err
    # Finished, the base is accepted without the option.
    train(config, base, resume=True, runtime=CPU)
    assert run_app(app, ["finetune", "--base", str(base), *out, "--out", str(tmp_path / "ft2")]) == 0


def test_kill_between_final_checkpoint_and_summary_is_finished_by_resume(
    manifest, tiny_imagenet, tmp_path, monkeypatch
):
    import transfer.training as training

    config = pretrain_config(manifest, tiny_imagenet, epochs=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for kill -9 right after the final checkpoint

    monkeypatch.setattr(training, "finish_run", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", runtime=CPU)
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["status"] == "in progress"
    summary = train(config, tmp_path / "run", resume=True, runtime=CPU)
    assert summary["status"] == "complete"
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["status"] == "complete"
    load_model(tmp_path / "run")


# --- item 12: one-line errors --------------------------------------------------------------------------------------


def test_pretrain_with_an_empty_validation_set_is_a_one_line_error(tiny_imagenet, tmp_path, capsys):
    """5 images per class in an ILSVRC-layout pool, default --val-fraction 0.05: no validation image."""
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:2]
    pool = tmp_path / "pool"
    for wnid in wnids:
        (pool / wnid).mkdir(parents=True)
        for src in sorted((tiny_imagenet / "train" / wnid / "images").iterdir())[:5]:
            (pool / wnid / src.name).symlink_to(src)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]})
    )
    err = one_line_error(
        ["pretrain", "--manifest", str(manifest), "--source-root", str(pool), "--out", str(tmp_path / "run"),
         "--arch", "small_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert "--val-fraction 0.05: leaves no validation images" in err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_out_naming_a_folder_is_refused_before_any_work(dagm_class1_test, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    err = one_line_error(["split", "--dagm", str(dagm_class1_test), "--out", str(folder)], capsys)
    assert f"--out {folder}: is a folder" in err
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    err = one_line_error(
        ["split", "--dagm", str(dagm_class1_test), "--out", str(afile / "split.json")], capsys
    )
    assert "is a file, not a folder" in err
    from tests.test_export import make_run

    run = make_run(tmp_path, dagm_class1_test, "small_cnn")
    err = one_line_error(["export", "--model", str(run), "--onnx", str(folder)], capsys)
    assert f"--onnx {folder}: is a folder" in err
    assert list(folder.iterdir()) == []


def test_wrong_shaped_tensor_is_one_line_naming_file_and_tensor(manifest, tiny_imagenet, tmp_path, capsys):
    run = tmp_path / "run"
    config = pretrain_config(manifest, tiny_imagenet, epochs=2)
    train(config, run, runtime=Runtime(device="cpu", stop_after_steps=6))  # into epoch 2
    last = last_checkpoint_path(run)
    checkpoint = torch.load(last, weights_only=True)
    key = next(k for k in checkpoint["model"] if k.endswith("weight") and checkpoint["model"][k].ndim == 4)
    checkpoint["model"][key] = torch.zeros(1, 1, 1, 1)
    torch.save(checkpoint, last)
    err = one_line_error(["pretrain", "--out", str(run), "--resume", "--device", "cpu"], capsys)
    assert str(last) in err and f"'{key}'" in err and "shape (1, 1, 1, 1)" in err
    # best.pt of a classifier (loaded by evaluate/localize/export)
    best = torch.load(run / "best.pt", weights_only=True)
    best["model"][key] = torch.zeros(2, 2)
    best["status"] = "complete"
    torch.save(best, run / "best.pt")
    with pytest.raises(DataonomyError, match=rf"best.pt: tensor '{key}' has shape \(2, 2\)"):
        load_model(run)


def test_wrong_shaped_segdec_tensor_names_it(tmp_path):
    from transfer.segdec import SegDecNet, cut_trunk

    trunk, channels = cut_trunk(models.get_model("small_cnn", 2, init=False), 8)
    state = SegDecNet(trunk, channels, 8, 4).state_dict()
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = torch.zeros(3)
    record = {
        "format": "transfer.model/1", "kind": "finetune", "arch": "small_cnn", "head": "segdec", "output_stride": 8,
        "head_channels": 4, "status": "complete", "model": state, "num_classes": 2, "input_size": None,
        "mean": [0.5] * 3, "std": [0.5] * 3, "config": {},
    }  # fmt: skip
    torch.save(record, tmp_path / "best.pt")
    with pytest.raises(DataonomyError, match=rf"tensor '{key}' has shape \(3,\)"):
        load_model(tmp_path / "best.pt")
    # A record without a key inference needs: a one-line error naming the file and the key.
    torch.save({k: v for k, v in record.items() if k != "mean"}, tmp_path / "best.pt")
    with pytest.raises(DataonomyError, match=r"best.pt: the saved model lacks mean"):
        load_model(tmp_path / "best.pt")


def test_torn_last_metrics_line_is_dropped_on_resume(manifest, tiny_imagenet, tmp_path):
    config = pretrain_config(manifest, tiny_imagenet, epochs=2, checkpoint_every=1)
    train(config, tmp_path / "straight", runtime=CPU)
    run = tmp_path / "torn"
    train(config, run, runtime=Runtime(device="cpu", stop_after_steps=4))  # 1 step into epoch 2 (3 an epoch)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "step": 1')  # a kill in the middle of the append
    assert train(config, run, resume=True, runtime=CPU)["status"] == "complete"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert strip(lines) == strip(straight)
    # A damaged line that is not the last is no kill's doing: a clear error.
    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    last_checkpoint_path(run).unlink()
    (run / "best.pt").unlink()
    with pytest.raises(DataonomyError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        train(config, run, resume=True, runtime=CPU)


# --- item 13: a run that failed in its first epoch -----------------------------------------------------------------


def test_run_failed_in_first_epoch_can_be_rerun_or_resumed(
    manifest, tiny_imagenet, tmp_path, monkeypatch, capsys
):
    import transfer.training as training

    config = pretrain_config(manifest, tiny_imagenet, epochs=1)
    real_loss = training.model_loss

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    for how in ("rerun", "resume"):
        run = tmp_path / how
        monkeypatch.setattr(training, "model_loss", fails)
        with pytest.raises(RuntimeError, match="simulated"):
            train(config, run, runtime=CPU)
        monkeypatch.setattr(training, "model_loss", real_loss)
        assert (run / "config.json").is_file() and not last_checkpoint_path(run).exists()
        if how == "rerun":
            assert train(config, run, runtime=CPU)["status"] == "complete"
        else:  # --resume with nothing saved yet starts afresh, options from the folder's config.json
            assert run_app(app, ["pretrain", "--out", str(run), "--resume", "--device", "cpu"]) == 0
            assert (run / "summary.json").is_file()
    a, b = (torch.load(tmp_path / n / "best.pt", weights_only=True)["model"] for n in ("rerun", "resume"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


# --- item 15: messages ---------------------------------------------------------------------------------------------


def test_unreadable_checkpoint_never_advises_weights_only_false(tmp_path):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(b"\x80\x02cos\nsystem\nq\x00.")
    for path in (random_bytes, crafted):
        with pytest.raises(DataonomyError) as info:
            models.read_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: corrupt or unreadable checkpoint")
        assert "weights_only" not in message and "False" not in message and "\n" not in message


def test_offline_imagenet_error_gives_advice_finetune_can_follow(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(DataonomyError) as info:
        models.imagenet_state_dict("inception_v3")
    message = str(info.value)
    assert message.startswith("--init/--base imagenet:") and "--weights" not in message
    assert "TORCH_HOME" in message and str(tmp_path / "hub") in message


# --- item 16: defaults and progress for a new user -----------------------------------------------------------------


def test_default_pretrain_lr_suits_batch_and_init(manifest, tiny_imagenet, tmp_path, capsys):
    assert default_pretrain_lr(256, "scratch") == pytest.approx(0.1)
    assert default_pretrain_lr(32, "scratch") == pytest.approx(0.0125)
    assert default_pretrain_lr(32, "imagenet") == pytest.approx(0.00125)
    wnids = [e["wnid"] for e in json.loads(manifest.read_text())["selected"]]
    common = dict(manifest="m", source_root="s", wnids=wnids, arch="small_cnn", image_size=32)
    assert PretrainConfig(**common, batch_size=32, init="imagenet").lr == pytest.approx(0.00125)
    assert PretrainConfig(**common, batch_size=64).lr == pytest.approx(0.025)
    assert PretrainConfig(**common, batch_size=32, init="imagenet", lr=0.01).lr == 0.01
    assert run_app(app, ["pretrain", "--help"]) == 0
    help_words = capsys.readouterr().out.translate(str.maketrans("│╭╮╰╯─", "      ")).split()  # rich's boxes
    assert "batch size / 256" in " ".join(help_words)
    run = tmp_path / "run"
    code = run_app(
        app,
        ["pretrain", "--manifest", str(manifest), "--source-root", str(tiny_imagenet), "--out", str(run), "--arch",
         "small_cnn", "--image-size", "32", "--images-per-class", "4", "--epochs", "1", "--batch-size", "4",
         "--device", "cpu", "--no-amp"],
    )  # fmt: skip
    assert code == 0
    assert json.loads((run / "config.json").read_text())["lr"] == pytest.approx(0.1 * 4 / 256)


def test_resume_extends_a_finished_run_on_a_deterministic_schedule(manifest, tiny_imagenet, tmp_path, capsys):
    config = pretrain_config(manifest, tiny_imagenet, epochs=1, warmup_epochs=0.4)
    for name in ("a", "b"):
        train(config, tmp_path / name, runtime=CPU)
        assert (
            run_app(
                app,
                ["pretrain", "--out", str(tmp_path / name), "--resume", "--epochs", "3", "--device", "cpu"],
            )
            == 0
        )
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    # Steps 4..9 follow the 3-epoch warmup-cosine schedule (3 steps an epoch, round(0.4 * 3) = 1 warmup step).
    assert [x["step"] for x in lines] == [3, 6, 9]
    for line in lines[1:]:
        assert line["lr"] == pytest.approx(0.05 * warmup_cosine(line["step"], 1, 9))
    a, b = (torch.load(tmp_path / n / "best.pt", weights_only=True)["model"] for n in "ab")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["epochs"] == 3
    capsys.readouterr()
    err = one_line_error(
        ["pretrain", "--out", str(tmp_path / "a"), "--resume", "--epochs", "2", "--device", "cpu"], capsys
    )
    assert "--epochs 2: the run" in err and "already trained 3 epochs" in err
    # Other options still may not change on resume.
    assert "options differ" in one_line_error(
        [
            "pretrain",
            "--out",
            str(tmp_path / "a"),
            "--resume",
            "--epochs",
            "4",
            "--lr",
            "0.5",
            "--device",
            "cpu",
        ],
        capsys,
    )


def test_progress_lines_when_stderr_is_not_a_terminal(manifest, tiny_imagenet, tmp_path, capsys):
    config = pretrain_config(manifest, tiny_imagenet, epochs=1)
    train(config, tmp_path / "run", runtime=Runtime(device="cpu", log_every=0))
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if "images/s" in line]
    assert len(progress) == 3  # every step at a 0 s interval (3 steps)
    assert progress[0].startswith("epoch 1/1 step 1/3") and "loss" in progress[0]
    train(config, tmp_path / "quiet", runtime=Runtime(device="cpu", log_every=None))
    assert "images/s" not in capsys.readouterr().err
