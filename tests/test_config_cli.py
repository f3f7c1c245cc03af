"""`transfer pretrain/finetune --config`: a saved run's config.json plus the options given on the command line;
the options held to the config fields; one name per option across the `transfer` commands."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import typer.main

from dataonomy.cli_utils import run_app
from transfer.cli import app
from transfer.config import DERIVED_FIELDS, RUN_OPTIONS, FinetuneConfig, PretrainConfig
from transfer.models import model_spec

COMMANDS = typer.main.get_command(app).commands
CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
FAST = ["--device", "cpu", "--no-amp", "--stop-after-steps", "1"]  # config.json is written before step 1


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_options_and_config_fields_cannot_drift(kind):
    params = COMMANDS[kind].params
    options = {p.name for p in params}
    config_fields = {f.name: f for f in fields(CONFIGS[kind])}
    derived, run_only = set(DERIVED_FIELDS[kind]), set(RUN_OPTIONS[kind])
    assert sorted(set(config_fields) - derived - options) == [], "config fields without an option"
    assert sorted(options - set(config_fields) - run_only) == [], (
        "options that are neither field nor run-only"
    )
    # The documented exceptions name real things, and nothing is both.
    assert derived <= set(config_fields) and not derived & options
    assert run_only <= options and not run_only & set(config_fields)
    for p in params:
        field = config_fields.get(p.name)
        if field is None:
            continue
        assert "--" + p.name.replace("_", "-") in p.opts, f"{p.opts}: not named after the field {p.name}"
        # None stands for "derived" (the architecture's, the base's, the head's); any other default is the field's.
        if p.default is not None and field.default is not MISSING:
            assert p.default == field.default, f"{p.opts[0]}: default {p.default}, field {field.default}"


def test_one_name_per_option_across_commands():
    """A spelling means one parameter everywhere, and a parameter has one spelling (hidden old names aside)."""
    params_of_option, options_of_param = defaultdict(set), defaultdict(set)
    for command in COMMANDS.values():
        for p in command.params:
            if getattr(p, "hidden", False):
                continue
            for option in p.opts + p.secondary_opts:
                params_of_option[option].add(p.name)
            options_of_param[p.name].add(tuple(p.opts))
    assert {k: v for k, v in params_of_option.items() if len(v) > 1} == {}
    assert {k: v for k, v in options_of_param.items() if len(v) > 1} == {}
    assert "--patch-size" in params_of_option and "--patch" not in params_of_option


def test_localize_keeps_patch_as_a_hidden_alias(monkeypatch, tmp_path, capsys):
    """Scripts written with `localize --patch N` still run, and pass N where --patch-size N goes."""
    import transfer.localize_run as localize_run

    seen = []
    monkeypatch.setattr(
        localize_run, "localize_images", lambda model, images, out, patch, *a, **k: seen.append(patch)
    )
    monkeypatch.setattr(localize_run, "format_localize_summary", lambda report: "done")
    run = ["localize", "--model", str(tmp_path), "--out", str(tmp_path / "out")]
    assert run_app(app, [*run, "--patch-size", "48"]) == 0
    assert run_app(app, [*run, "--patch", "40"]) == 0
    assert seen == [48, 40]
    assert run_app(app, [*run, "--patch", "40", "--patch-size", "48"]) == 2
    assert "give one" in capsys.readouterr().err
    assert run_app(app, ["localize", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--patch-size" in shown and "--patch " not in shown


def _manifest(tmp_path: Path, tiny_imagenet: Path) -> Path:
    wnids = (tiny_imagenet / "wnids.txt").read_text().split()[:5]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema": "dataonomy.manifest/1", "selected": [{"wnid": w} for w in wnids]}))
    return path


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_pretrain_reruns_a_saved_run_with_the_options_given(tmp_path, tiny_imagenet, capsys):
    base = tmp_path / "base"
    code = run_app(
        app,
        [
            "pretrain", "--manifest", str(_manifest(tmp_path, tiny_imagenet)), "--source-root", str(tiny_imagenet),
            "--out", str(base), "--arch", "small_cnn", "--image-size", "32", "--images-per-class", "8",
            "--epochs", "1", "--batch-size", "8", "--seed", "1", "--dropout", "0.2", *FAST,
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rerun = tmp_path / "rerun"
    # --seed 0 is the option's default: given explicitly, it still replaces the file's 1.
    argv = [
        "pretrain",
        "--config",
        str(base / "config.json"),
        "--out",
        str(rerun),
        "--epochs",
        "2",
        "--seed",
        "0",
    ]
    assert run_app(app, [*argv, *FAST]) == 0, capsys.readouterr().err
    assert _config(rerun) == _config(base) | {"epochs": 2, "seed": 0}
    # Another architecture brings its own defaults for the options not given (the file's may not fit it).
    other = tmp_path / "other_arch"
    argv = ["pretrain", "--config", str(base / "config.json"), "--out", str(other), "--arch", "resnet18"]
    assert run_app(app, [*argv, "--image-size", "64", *FAST]) == 0, capsys.readouterr().err
    spec = model_spec("resnet18")
    assert _config(other) == _config(base) | {
        "arch": "resnet18", "image_size": 64, "mean": list(spec.mean), "std": list(spec.std), "dropout": spec.dropout,
    }  # fmt: skip
    # --resume with --config checks the file against the run it continues.
    code = run_app(
        app, ["pretrain", "--config", str(base / "config.json"), "--out", str(rerun), "--resume", *FAST]
    )
    assert code == 2 and "--seed 1 (the run has 0)" in capsys.readouterr().err


def test_finetune_reruns_a_saved_run_with_the_options_given(tmp_path, dagm_class1_test, capsys):
    base = tmp_path / "base"
    code = run_app(
        app,
        [
            "finetune", "--base", "scratch", "--arch", "small_cnn", "--dagm", str(dagm_class1_test),
            "--test-fraction", "0.2", "--out", str(base), "--head", "classify", "--image-size", "48",
            "--epochs", "1", "--batch-size", "32", "--seed", "1", "--dropout", "0.3", *FAST,
        ],
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rerun = tmp_path / "rerun"
    argv = ["finetune", "--config", str(base / "config.json"), "--out", str(rerun)]
    assert run_app(app, [*argv, "--lr", "0.02", "--label-smoothing", "0.1", *FAST]) == 0, (
        capsys.readouterr().err
    )
    assert _config(rerun) == _config(base) | {"lr": 0.02, "label_smoothing": 0.1}
    # Another architecture for the same --base scratch: its normalisation and defaults, not the file's.
    other = tmp_path / "other_arch"
    argv = ["finetune", "--config", str(base / "config.json"), "--out", str(other), "--arch", "resnet18"]
    assert run_app(app, [*argv, "--image-size", "48", *FAST]) == 0, capsys.readouterr().err
    spec = model_spec("resnet18")
    assert _config(other) == _config(base) | {
        "arch": "resnet18", "mean": list(spec.mean), "std": list(spec.std), "dropout": spec.dropout,
    }  # fmt: skip


def test_bad_config_files_are_one_line_errors_naming_the_file(tmp_path, capsys):
    pretrain = PretrainConfig(manifest="m.json", source_root="pool", wnids=["a", "b"], arch="small_cnn")
    finetune = FinetuneConfig(base="scratch", arch="small_cnn", data=str(tmp_path))
    files = {}
    for name, content in [
        ("pretrain.json", json.dumps(pretrain.to_dict())),
        ("finetune.json", json.dumps(finetune.to_dict())),
        ("broken.json", '{"kind": "pretrain", '),
        ("unknown.json", json.dumps(pretrain.to_dict() | {"colour": "red"})),
    ]:
        files[name] = tmp_path / name
        files[name].write_text(content)
    files["missing.json"] = tmp_path / "missing.json"

    def error(command: str, name: str) -> str:
        out = tmp_path / "out"
        code = run_app(app, [command, "--config", str(files[name]), "--out", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: --config {files[name]}: ") and err.count("\n") == 1, err
        assert not out.exists()
        return err

    assert "a pretrain run's config" in error("finetune", "pretrain.json")
    assert "a finetune run's config" in error("pretrain", "finetune.json")
    assert "not a readable config" in error("pretrain", "broken.json")
    assert "unknown config field(s) colour" in error("pretrain", "unknown.json")
    assert "not a readable config (FileNotFoundError)" in error("finetune", "missing.json")
