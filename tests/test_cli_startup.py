"""The command lines start fast: `--help` and option errors load neither torch nor torchvision (they take 4-5 s
to import on a small machine), and the names their help texts list are the registries' own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataonomy import builtin_names

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from {module} import app
from dataonomy.cli_utils import run_app
code = run_app(app, {argv!r})
heavy = sorted(m for m in ("torch", "torchvision", "onnxruntime", "scipy", "h5py") if m in sys.modules)
print(code, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("transfer.cli", ["--help"]),
        ("transfer.cli", ["finetune", "--help"]),
        ("transfer.cli", ["predict", "--help"]),
        ("transfer.cli", ["finetune", "--epochs", "many"]),
        ("dataonomy.cli", ["--help"]),
        ("dataonomy.cli", ["select", "--help"]),
        ("dataonomy.cli", ["select", "--k", "many"]),
    ],
)
def test_help_and_option_errors_do_not_import_torch(module, argv):
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, argv=argv)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    code, heavy = probe.stdout.split()[-2:]
    assert code == ("0" if "--help" in argv else "2"), probe.stderr
    assert heavy == "-", f"{' '.join(argv)} imported {heavy}"


def test_help_names_are_the_registries_own():
    from dataonomy.affinity import list_affinities
    from dataonomy.backbones import list_backbones
    from dataonomy.datasets import list_datasets
    from dataonomy.datasets.registry import READER_MODULES

    assert builtin_names.AFFINITIES == tuple(list_affinities())
    assert builtin_names.BACKBONES == tuple(list_backbones())
    assert builtin_names.DATASETS == tuple(list_datasets()) == READER_MODULES
