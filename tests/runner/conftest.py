"""The runner tests' fixtures: the local one-node Slurm cluster, for the modules that mark
themselves with ``slurm_cluster.SLURM_TESTS``."""
from __future__ import annotations

import subprocess

import pytest
from slurm_cluster import cluster_up

from mirl_lib.files.paths import CHECKOUT


@pytest.fixture(scope="session")
def slurm() -> None:
    """The local one-node cluster, started when it is not running."""
    if not cluster_up():
        subprocess.run([str(CHECKOUT / "scripts" / "slurm_local.sh"), "start"], check=True,
                       timeout=180, capture_output=True)
    assert cluster_up()
