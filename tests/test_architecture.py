"""The layer rule of docs/architecture.md, checked on the code: packages on floors, imports that go
only down (function-level ones included), no cycle, every module listed, private names private,
and one place for strategy names and run file names."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from mirl_lib.files.paths import CHECKOUT

DOC = CHECKOUT / "docs" / "architecture.md"
FLOOR_ROW = re.compile(r"^\| (\d+) \| `(\w+)` \|", re.M)
MODULE_ROW = re.compile(r"^\| `(\w+/\w+\.py)` \|", re.M)
ENTRY_POINTS = ("__init__", "__main__")  # the package's own files: above every floor


def floors(doc: Path = DOC) -> dict[str, int]:
    """``{package: floor}`` from the table of docs/architecture.md."""
    return {package: int(floor) for floor, package in FLOOR_ROW.findall(doc.read_text())}


@dataclass(frozen=True)
class Edge:
    source: str  # module, e.g. "core.config"
    target: str
    line: int


def modules(root: Path) -> dict[str, Path]:
    """``{"core.config": path, ...}`` of every module under ``root`` (a ``mirl_lib`` folder)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        found[".".join(rel.parts)] = path
    return found


def edges(root: Path) -> list[Edge]:
    """Every import of a ``mirl_lib`` module by a ``mirl_lib`` module, wherever it stands in the
    file (module level, inside a function, under ``TYPE_CHECKING``)."""
    known = modules(root)
    out = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import module`` imports that module, ``from module import name``
                # the module
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if not target.startswith("mirl_lib."):
                    continue
                target = target.removeprefix("mirl_lib.")
                while target and target not in known and f"{target}.__init__" not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.append(Edge(name, target, node.lineno))
    return sorted(set(out), key=lambda e: (e.source, e.target, e.line))


def violations(root: Path, table: dict[str, int]) -> list[str]:
    """What breaks the layer rule under ``root``: imports up a floor or across to another package
    of the same floor, and cycles of imports."""
    problems = []

    def package(module: str) -> str:
        return module.partition(".")[0]

    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for edge in edges(root):
        src, dst = package(edge.source), package(edge.target)
        graph[edge.source].add(edge.target)
        if edge.source in ENTRY_POINTS or dst in ENTRY_POINTS:
            continue
        if src not in table or dst not in table:
            problems.append(f"{edge.source}:{edge.line}: package {src or dst!r} has no floor in "
                            f"docs/architecture.md")
        elif table[dst] > table[src]:
            problems.append(f"{edge.source}:{edge.line} imports {edge.target}: up from floor "
                            f"{table[src]} ({src}) to floor {table[dst]} ({dst})")
        elif table[dst] == table[src] and src != dst:
            problems.append(f"{edge.source}:{edge.line} imports {edge.target}: across floor "
                            f"{table[src]}, from {src} to {dst}")
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        problems.append(f"import cycle: {' -> '.join(exc.args[1])}")
    return problems


def test_the_folder_is_the_pipeline() -> None:
    root = CHECKOUT / "mirl_lib"
    packages = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    table = floors()
    assert packages == set(table), "mirl_lib's packages are not the floors of the doc's table"
    assert sorted(p.name for p in root.glob("*.py")) == ["__init__.py", "__main__.py"]


def test_every_module_is_in_the_module_table() -> None:
    listed = set(MODULE_ROW.findall(DOC.read_text()))
    present = {f"{p.parent.name}/{p.name}" for p in (CHECKOUT / "mirl_lib").glob("*/*.py")
               if p.name != "__init__.py"}
    assert present - listed == set(), "modules missing from docs/architecture.md"
    assert listed - present == set(), "docs/architecture.md lists modules that do not exist"


def test_imports_go_down_the_floors_and_form_no_cycle() -> None:
    assert edges(CHECKOUT / "mirl_lib"), "found no import at all: the walker is broken"
    assert violations(CHECKOUT / "mirl_lib", floors()) == []


@pytest.mark.parametrize("planted, expected", [
    # an upward import inside a function body of the ground floor
    ("core/names.py",
     "core.names:{line} imports report.intervals: up from floor 0 (core) to floor 6"),
    # across one floor: net and data are both on floor 2
    ("net/sizing.py", "net.sizing:{line} imports data.photos: across floor 2, from net to data"),
])
def test_a_planted_import_that_breaks_the_rule_is_named(tmp_path: Path, planted: str,
                                                        expected: str) -> None:
    root = shutil.copytree(CHECKOUT / "mirl_lib", tmp_path / "mirl_lib",
                           ignore=shutil.ignore_patterns("__pycache__"))
    target = {"core/names.py": "mirl_lib.report import intervals",
              "net/sizing.py": "mirl_lib.data.photos import BUNDLED_TEST"}[planted]
    path = root / planted
    lines = path.read_text().splitlines()
    lines += ["", "", "def planted() -> None:", f"    from {target}  # noqa: F401", ""]
    path.write_text("\n".join(lines))
    found = violations(root, floors())
    assert found[0].startswith(expected.format(line=len(lines) - 1)), found
    # reading back down closes a loop too, and that is named as well
    assert all(f.startswith("import cycle:") for f in found[1:]), found


def test_a_planted_cycle_is_named(tmp_path: Path) -> None:
    root = shutil.copytree(CHECKOUT / "mirl_lib", tmp_path / "mirl_lib",
                           ignore=shutil.ignore_patterns("__pycache__"))
    path = root / "study" / "strategies.py"  # study.study imports it; now it imports study.study
    path.write_text(path.read_text() + "\n\ndef planted() -> None:\n"
                    "    from mirl_lib.study.study import Study  # noqa: F401\n")
    found = violations(root, floors())
    assert len(found) == 1 and found[0].startswith("import cycle:"), found
    assert {"study.study", "study.strategies"} <= set(found[0].split(": ")[1].split(" -> "))


def test_the_ground_floor_and_the_statistics_load_without_torch() -> None:
    code = ("import sys; import mirl_lib.core.errors, mirl_lib.core.names, mirl_lib.core.config, "
            "mirl_lib.files.atomic, mirl_lib.files.paths, mirl_lib.report.intervals, "
            "mirl_lib.core.imports, mirl_lib.runner.slurm_job, mirl_lib.study.stage, "
            "mirl_lib.runner.papermill, mirl_lib.runner.slurm; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=CHECKOUT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def private_uses(root: Path) -> list[str]:
    """``from mirl_lib.x import _name`` and ``module._name`` reads of another mirl_lib module."""
    found = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mirl_lib"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return found


def test_private_names_stay_in_their_module() -> None:
    assert private_uses(CHECKOUT / "mirl_lib") == []
    scripts = CHECKOUT / "benchmarks"
    for path in scripts.glob("*.py"):
        assert not re.search(r"from mirl_lib[\w.]* import .*\b_[a-z]", path.read_text()), path


def _literals(source: str) -> list[tuple[int, str]]:
    """String constants of ``source`` that are not docstrings, dictionary keys or subscripts."""
    tree = ast.parse(source)
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_strategy_names_and_run_file_names_are_spelled_in_one_place() -> None:
    """A strategy name is spelled only in ``core.names`` and the registry, a file name of a run
    only in ``files.paths``; the library and the stage notebooks use those names."""
    from mirl_lib.files import paths
    from mirl_lib.study.strategies import REGISTRY

    files = {v for k, v in vars(paths).items() if k.isupper() and isinstance(v, str)
             and "." in v and not v.startswith(".")}
    files |= set(paths.FIGURE_FILES.values())
    assert {"metrics.csv", "final.pt", "point.json", "catalog.csv"} <= files
    names = set(REGISTRY)
    owners = {"core/names.py", "files/paths.py", "study/strategies.py"}
    found = []
    sources = [(f"mirl_lib/{p.relative_to(CHECKOUT / 'mirl_lib')}", p.read_text())
               for p in sorted((CHECKOUT / "mirl_lib").rglob("*.py"))
               if str(p.relative_to(CHECKOUT / "mirl_lib")) not in owners]
    for nb in sorted((CHECKOUT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources += [(f"{nb.name} cell {i}", "".join(c["source"])) for i, c in enumerate(cells)
                    if c["cell_type"] == "code"]
    for where, source in sources:
        for line, value in _literals(source):
            if value in names or value in files:
                found.append(f"{where}:{line}: {value!r}")
    assert found == []


def test_the_registry_takes_the_shared_names() -> None:
    from mirl_lib.core.names import DEFAULT_STRATEGIES, DENSE, TRUNK
    from mirl_lib.study.strategies import DENSE_POINT, REGISTRY, optional_names

    assert REGISTRY[DENSE].role == "dense" and DENSE_POINT == (DENSE, 0)
    assert REGISTRY[TRUNK].role == "trunk"
    assert set(DEFAULT_STRATEGIES) <= set(optional_names())


def test_the_writers_stand_on_the_errors_alone() -> None:
    """Everything writes through ``files.atomic`` and loads tensors through ``files.tensors``:
    they import nothing of mirl but the errors (and each other), so any module may use them."""
    found: dict[str, set[str]] = {}
    for edge in edges(CHECKOUT / "mirl_lib"):
        found.setdefault(edge.source, set()).add(edge.target)
    assert found.get("core.errors", set()) == set()
    assert found["files.atomic"] <= {"core.errors"}
    assert found["files.tensors"] <= {"core.errors", "files.atomic"}
