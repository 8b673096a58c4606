"""Loading a script of ``benchmarks/`` (not a package) as a module, for the tests that call it."""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest


@contextmanager
def loaded_script(path: Path, name: str) -> Iterator[ModuleType]:
    """``path`` executed as module ``name``, registered in ``sys.modules`` while in use (its
    dataclasses look their module up there) and removed afterwards. Its folder is on
    ``sys.path`` meanwhile, as for a script run from the command line (the benchmarks import their
    sibling ``benchrows``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(path.parent))


def script_fixture(path: Path, name: str):
    """A module-scoped pytest fixture that yields ``loaded_script(path, name)``."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[ModuleType]:
        with loaded_script(path, name) as module:
            yield module

    return fixture
