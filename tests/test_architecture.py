"""The package's shape: no import cycle anywhere, a light top-level import, layers kept (lint-imports)."""

import subprocess
import sys
from pathlib import Path

import grimp

from tests.conftest import REPO


def test_no_module_imports_itself_through_a_cycle():
    graph = grimp.build_graph("torchrec_kd")
    cycles = sorted({tuple(sorted((m, dep))) for m in graph.modules for dep in graph.find_modules_directly_imported_by(m)
                     if graph.chain_exists(importer=dep, imported=m)})
    assert cycles == []


def test_importing_the_package_loads_neither_torchrec_nor_fbgemm():
    code = ("import sys, torchrec_kd; assert 'torchrec' not in sys.modules and 'fbgemm_gpu' not in sys.modules; "
            "from torchrec_kd import DistillationModel, UserError; print(DistillationModel.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "torchrec_kd.distill.model"


def test_the_layer_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"  # installed beside this interpreter
    out = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout
