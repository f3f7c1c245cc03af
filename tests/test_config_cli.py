"""`--config FILE` for every stage (select, pretrain, finetune, split, evaluate, localize, rootcause): the saved
config plus the options given on the command line; every stage's options held to its config fields; one name
per option across the commands of both CLIs."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import typer.main

from dataonomy.cli import SELECT_OPTION_FIELDS, SELECT_RUN_OPTIONS
from dataonomy.cli import app as dataonomy_app
from dataonomy.cli_utils import run_app
from dataonomy.option_groups import flat_fields
from dataonomy.selection import SelectConfig
from transfer.cli import app
from transfer.config import DERIVED_FIELDS, RUN_OPTIONS, FinetuneConfig, PretrainConfig
from transfer.models import model_spec
from transfer.stage_config import STAGE_CONFIGS, STAGE_DERIVED_FIELDS, STAGE_RUN_OPTIONS

COMMANDS = typer.main.get_command(app).commands
DATAONOMY_COMMANDS = typer.main.get_command(dataonomy_app).commands
CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, **STAGE_CONFIGS}
DERIVED = {**DERIVED_FIELDS, **STAGE_DERIVED_FIELDS}
RUN_ONLY = {**RUN_OPTIONS, **STAGE_RUN_OPTIONS}
FAST = ["--device", "cpu", "--no-amp", "--stop-after-steps", "1"]  # config.json is written before step 1


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_options_and_config_fields_cannot_drift(kind):
    params = COMMANDS[kind].params
    options = {p.name for p in params}
    config_fields = {f.name: f.field for f in flat_fields(CONFIGS[kind])}  # option groups' fields, flat
    derived, run_only = set(DERIVED[kind]), set(RUN_ONLY[kind])
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


def test_select_options_and_config_fields_cannot_drift():
    """`dataonomy select`: one option per SelectConfig field, named after it but for the documented renames."""
    params = DATAONOMY_COMMANDS["select"].params
    config_fields = {f.name: f for f in fields(SelectConfig)}
    field_of = {
        p.name: SELECT_OPTION_FIELDS.get(p.name, p.name) for p in params if p.name not in SELECT_RUN_OPTIONS
    }
    assert sorted(set(config_fields) - set(field_of.values())) == [], "config fields without an option"
    assert sorted(set(field_of.values()) - set(config_fields)) == [], (
        "options that are neither field nor run-only"
    )
    assert set(SELECT_RUN_OPTIONS) <= {p.name for p in params}
    for p in params:
        field = config_fields.get(field_of.get(p.name))
        if field is not None and p.default is not None and field.default is not MISSING:
            assert p.default == field.default, f"{p.opts[0]}: default {p.default}, field {field.default}"


def test_one_name_per_option_across_commands():
    """A spelling means one parameter everywhere, and a parameter has one spelling (hidden old names aside), in
    every command of both CLIs."""
    params_of_option, options_of_param = defaultdict(set), defaultdict(set)
    for command in [*COMMANDS.values(), *DATAONOMY_COMMANDS.values()]:
        for p in command.params:
            if getattr(p, "hidden", False) or p.param_type_name != "option":
                continue
            for option in p.opts + p.secondary_opts:
                params_of_option[option].add(p.name)
            options_of_param[p.name].add(tuple(p.opts))
    assert {k: v for k, v in params_of_option.items() if len(v) > 1} == {}
    assert {k: v for k, v in options_of_param.items() if len(v) > 1} == {}
    assert "--patch-size" in params_of_option and "--patch" not in params_of_option
    assert "--workers" in params_of_option and "--num-workers" not in params_of_option


def test_localize_keeps_patch_as_a_hidden_alias(monkeypatch, tmp_path, capsys):
    """Scripts written with `localize --patch N` still run, and pass N where --patch-size N goes."""
    import transfer.localize_run as localize_run

    seen = []
    monkeypatch.setattr(
        localize_run, "localize_images", lambda config, out, **k: seen.append(config.patch_size)
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


# ---------------------------------------------------------------- the stages after training: split ... rootcause


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, dagm_class1_test) -> Path:
    """An untrained patch classifier saved as a fine-tuning run of a DAGM copy of 12 real Class1 test images."""
    import torch

    from transfer.models import build_model
    from transfer.training import model_record, save_model

    folder = tmp_path_factory.mktemp("dagm") / "Class1" / "Test"
    (folder / "Label").mkdir(parents=True)
    rows = [r.split("\t") for r in (dagm_class1_test / "Label" / "Labels.txt").read_text().splitlines()[1:]]
    kept = sorted([r for r in rows if r[1] == "1"][:6] + [r for r in rows if r[1] == "0"][:6])
    for row in kept:
        (folder / row[2]).symlink_to(dagm_class1_test / row[2])
        if row[1] == "1":
            (folder / "Label" / row[4].strip()).symlink_to(dagm_class1_test / "Label" / row[4].strip())
    (folder / "Label" / "Labels.txt").write_text("1\n" + "\n".join("\t".join(r) for r in kept) + "\n")
    config = FinetuneConfig(
        base="scratch", arch="small_cnn", data=str(folder), head="classify", patches=True, patch_size=64,
        patch_stride=64, image_size=64, val_fraction=0.2, test_fraction=0.25,
    )  # fmt: skip
    torch.manual_seed(0)
    meta = {"classes": ["ok", "defect"], "groups": ["Class1"], "threshold": 0.5}
    meta.update(input="patch", patch_size=64, patch_stride=64)
    run = tmp_path_factory.mktemp("runs") / "patch"
    save_model(model_record(config, build_model("small_cnn", 2, "scratch"), meta), run / "best.pt")
    return run


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_split_reruns_a_saved_split_with_the_options_given(dagm_class1_test, tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        run_app(app, ["split", "--dagm", str(dagm_class1_test), "--out", str(first), "--split-seed", "3"])
        == 0
    )
    argv = ["split", "--config", str(first), "--out", str(second), "--val-fraction", "0.3"]
    assert run_app(app, argv) == 0, capsys.readouterr().err
    a, b = _json(first), _json(second)
    assert b["config"] == a["config"] | {"val_fraction": 0.3} and a["config"]["split_seed"] == 3
    assert b["params"] == a["params"] | {"val_fraction": 0.3}
    assert len(b["folds"]["val"]) > len(a["folds"]["val"])
    # The option's old name still works, and a split saved with the old field name (seed) still reruns.
    third, fourth = tmp_path / "c.json", tmp_path / "d.json"
    assert run_app(app, ["split", "--dagm", str(dagm_class1_test), "--out", str(third), "--seed", "3"]) == 0
    assert _json(third)["folds"] == a["folds"]
    old = _json(first)
    old["config"]["seed"] = old["config"].pop("split_seed")
    first.write_text(json.dumps(old))
    assert run_app(app, ["split", "--config", str(first), "--out", str(fourth)]) == 0, capsys.readouterr().err
    assert _json(fourth)["folds"] == a["folds"] and _json(fourth)["config"]["split_seed"] == 3


def test_evaluate_reruns_a_saved_evaluation_with_the_options_given(patch_run, capsys):
    argv = ["evaluate", "--model", str(patch_run), "--device", "cpu", "--no-errors", "--batch-size", "16"]
    assert run_app(app, argv) == 0, capsys.readouterr().err
    first = _json(patch_run / "eval_test.json")["config"]
    assert first["model"] == str(patch_run) and first["errors"] is False and first["kind"] == "evaluate"
    argv = ["evaluate", "--config", str(patch_run / "eval_test.json"), "--split", "val", "--device", "cpu"]
    assert run_app(app, argv) == 0, capsys.readouterr().err
    assert _json(patch_run / "eval_val.json")["config"] == first | {"split": "val"}


def test_localize_reruns_a_saved_config_with_the_options_given(patch_run, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    argv = [
        "localize",
        "--model",
        str(patch_run),
        "--out",
        str(first),
        "--stride",
        "64",
        "--threshold",
        "0.5",
    ]
    assert run_app(app, [*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    saved = _json(first / "config.json")
    assert saved["stride"] == 64 and saved["threshold"] == 0.5 and saved["kind"] == "localize"
    argv = ["localize", "--config", str(first / "config.json"), "--out", str(second), "--limit", "1"]
    assert run_app(app, [*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    assert _json(second / "config.json") == saved | {"limit": 1}
    report = _json(second / "localize.json")
    assert len(report["images"]) == 1 and report["parameters"]["stride"] == 64
    # The old name of --patch-size in a rerun still replaces the file's value.
    argv = [
        "localize",
        "--config",
        str(first / "config.json"),
        "--out",
        str(tmp_path / "third"),
        "--patch",
        "32",
    ]
    assert run_app(app, [*argv, "--device", "cpu"]) == 2
    assert "--stride 64: must be between 1 and the patch size 32" in capsys.readouterr().err


def test_rootcause_reruns_a_saved_config_with_the_options_given(dagm_class1_test, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(dagm_class1_test.glob("*.PNG"))[:6]:
        (images / path.name).symlink_to(path)
    first, second = tmp_path / "first", tmp_path / "second"
    argv = ["rootcause", "--images", str(images), "--out", str(first), "--window", "3", "--stride", "3"]
    assert run_app(app, [*argv, "--crop", "128", "--device", "cpu"]) == 0, capsys.readouterr().err
    saved = _json(first / "config.json")
    assert saved["crop"] == [128, 128] and saved["window"] == 3
    argv = ["rootcause", "--config", str(first / "config.json"), "--out", str(second), "--min-area", "50"]
    assert run_app(app, argv) == 0, capsys.readouterr().err
    assert _json(second / "config.json") == saved | {"min_area": 50}
    assert _json(second / "rootcause.json")["parameters"]["crop"] == [128, 128]


def test_select_reruns_a_manifest_with_the_options_given(dagm_class1_test, tmp_path, capsys):
    common = ["--backbone", "efficientnet_lite0", "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    argv = ["select", "--target-root", str(dagm_class1_test), "--target-images-per-class", "8", "--k", "3"]
    assert run_app(dataonomy_app, [*argv, *common, "--out", str(first)]) == 0, capsys.readouterr().err
    argv = ["select", "--config", str(first), "--k", "4", *common, "--out", str(second)]
    assert run_app(dataonomy_app, argv) == 0, capsys.readouterr().err
    a, b = _json(first), _json(second)
    assert b["parameters"] == a["parameters"] | {"k": 4} and len(b["selected"]) == 4


def test_a_stage_refuses_another_stages_config(tmp_path, capsys):
    path = tmp_path / "split.json"
    path.write_text(
        json.dumps({"params": {}, "folds": {}, "config": {"kind": "split", "data": str(tmp_path)}})
    )
    code = run_app(app, ["localize", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err == f"error: --config {path}: a split config; `transfer localize` takes a localize config\n"
    )
