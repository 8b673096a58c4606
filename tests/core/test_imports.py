"""What mirl's processes leave unimported (``core.imports.lean``), and a bad params file refused by
the stage runner before torch is imported."""
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
