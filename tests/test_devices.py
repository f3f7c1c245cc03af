"""One rule for every --device option (dataonomy.devices.resolve_device), used by every stage (issue 15).

`--device cuda:1` used to make selection's affinity and AHP run on the CPU (selection.py kept a rule of its own
that knew only "auto" and "cuda"); training and evaluation had two more. CUDA is faked here: the rule is what is
tested, not a GPU.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dataonomy.devices import resolve_device
from dataonomy.errors import DataonomyError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_the_rule_on_a_machine_with_two_gpus(two_gpus, monkeypatch):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device(None) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: this rank's GPU
    assert resolve_device("cuda") == torch.device("cuda", 1) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DataonomyError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_the_rule_on_a_machine_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    with pytest.raises(DataonomyError, match="--device cuda:1: no CUDA device"):
        resolve_device("cuda:1")


def test_training_evaluation_and_selection_use_the_one_rule(two_gpus, monkeypatch):
    from dataonomy.processes import Processes

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert Processes.from_env("cuda:1").device == torch.device("cuda", 1)
    assert Processes.from_env(None).device == torch.device("cuda", 0)
    # No module but dataonomy/devices.py asks torch whether there is a GPU to decide where to run.
    asking = []
    for package in ("dataonomy", "transfer", "dataonomy_demo"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                cuda = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                if cuda and node.attr == "is_available" and node.value.attr == "cuda":
                    asking.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    allowed = {"dataonomy/devices.py"}
    # transfer/cli.py asks once to size the data-loading worker pool, not to pick a device.
    stray = [a for a in asking if a.split(":")[0] not in allowed and not a.startswith("transfer/cli.py")]
    assert stray == []
