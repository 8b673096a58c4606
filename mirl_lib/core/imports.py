"""What mirl's processes leave unimported: ``lean()`` marks optional modules that the libraries it
drives would import without need as absent, before those libraries are imported.

- ``rfc3987_syntax``: jsonschema (imported by nbformat, so by papermill and every stage's process)
  imports it when it is installed (jupyter-events requires it) to check the ``iri`` string formats,
  and it builds an Earley grammar at import: 2.8 of the 3.6 s that ``import papermill`` takes on
  the 2-core machine. mirl never checks those formats (nbformat validates notebooks without a
  format checker); with the module absent jsonschema simply leaves those two formats unchecked.

Called first by ``core.processes`` and ``core.zygote`` (every papermill, kernel and training
process) and by ``runner.papermill`` (the runner and the command line). JupyterLab, which does
check event formats, runs in its own process and is not affected. No torch.
"""
from __future__ import annotations

import sys

UNUSED = ("rfc3987_syntax",)


def lean() -> None:
    """Mark the ``UNUSED`` modules absent in this process, unless already imported."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)
