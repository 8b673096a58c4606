"""What mirl's processes leave unimported (``core.imports.lean``), and a bad params file refused by
the stage runner, and a run the report command refuses, before torch is imported."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mirl_lib.files.paths import CHECKOUT, NOTEBOOKS


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=CHECKOUT, timeout=120)


def test_the_runner_reads_and_validates_notebooks_without_the_iri_grammar() -> None:
    notebook = sorted(NOTEBOOKS.glob("*.ipynb"))[0]
    done = run_python(
        "import sys, mirl_lib.runner.papermill, nbformat, papermill\n"
        f"nb = nbformat.read({str(notebook)!r}, as_version=4)\n"
        "nbformat.validate(nb)\n"
        "bad = nbformat.from_dict({**nb, 'cells': [{'cell_type': 'code'}]})\n"
        "try:\n    nbformat.validate(bad)\nexcept nbformat.ValidationError:\n    print('refused')\n"
        "print(sys.modules['rfc3987_syntax'])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "None"]  # validation works; the grammar never built


def test_papermill_and_kernel_processes_run_lean(tmp_path: Path) -> None:
    """``python -m mirl_lib.core.processes MODULE`` (how papermill and every kernel start) marks
    the grammar absent before MODULE runs."""
    (tmp_path / "probe.py").write_text(
        "import sys\nprint(sys.modules.get('rfc3987_syntax', 'unset'))\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{CHECKOUT}"}
    done = subprocess.run([sys.executable, "-m", "mirl_lib.core.processes", "probe"],
                          capture_output=True, text=True, cwd=CHECKOUT, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_a_bad_params_file_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-3\n  lr: 2e-3\n")
    done = run_python("import sys\nfrom mirl_lib.cli.main import main\n"
                      f"code = main(['stages', 'run', {str(bad)!r}])\n"
                      "print(code, 'torch' in sys.modules)")
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.strip() == (f"error: {bad}: train.lr: key written twice (lines 2 and 3); "
                                   "keep one")


def test_report_refuses_a_run_before_torch_is_imported(tmp_path: Path) -> None:
    """``report`` checks the run folder and the params file's identity first (the networks, the
    registry and the figures are imported only for a run it will analyse)."""
    committed = CHECKOUT / "results" / "full"
    default = CHECKOUT / "params" / "default.yaml"
    done = run_python("import sys\nfrom mirl_lib.cli.main import main\n"
                      f"codes = [main(['report', {str(tmp_path)!r}]), "
                      f"main(['report', {str(committed)!r}, '--params', {str(default)!r}])]\n"
                      "print(*codes, 'torch' in sys.modules)")
    assert done.stdout.split() == ["2", "2", "False"], done.stdout + done.stderr
    first, second = done.stderr.strip().splitlines()
    assert first.startswith(f"error: {tmp_path / 'metrics.csv'}: no such file")
    assert second.startswith(f"error: {committed / 'metrics.csv'}: scored by config ")
