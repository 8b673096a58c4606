"""One point's training spread over ``torchrun`` ranks (``launch_distributed``)."""
from __future__ import annotations

import os
import subprocess

from mirl_lib.core.errors import MirlError
from mirl_lib.core.processes import module_command
from mirl_lib.files.paths import importable


def launch_distributed(module: str, processes: int, *args: str) -> None:
    """Run ``python -m module args`` in ``processes`` ranks under ``torchrun --standalone``
    (the ranks and torchrun die with this process); raises ``MirlError`` if any rank fails."""
    # each rank, like torchrun itself, is forked from the warm zygote when one runs
    rank = module_command(module, *args)
    command = module_command("torch.distributed.run", "--standalone",
                             f"--nproc_per_node={processes}",
                             *(["--no-python", *rank] if rank[2] == "mirl_lib.core.zygote"
                               else ["-m", module, *args]))
    env = importable(dict(os.environ))
    env.setdefault("OMP_NUM_THREADS", "1")
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        raise MirlError(f"torchrun with {processes} processes failed (exit {code}) running "
                        f"{module} {' '.join(args)}; its ranks' errors are printed above")
