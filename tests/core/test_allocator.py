"""``train.malloc``: glibc's allocator kept from handing every step fresh pages, without changing a
single float of a training."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mirl_lib.core import allocator
from mirl_lib.core.config import TrainConfig, config_from_dict
from mirl_lib.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Trains the ``cpu`` preset for a few steps in a fresh process under the given ``train.malloc``;
# prints the weights' digest and the minor page faults of its last four steps (the first ones
# grow the heap either way).
TRAIN = """
import hashlib, json, resource, sys
sys.path.insert(0, sys.argv[3])
from ddp_worker import FakeSource
from mirl_lib.core import allocator
from mirl_lib.core.config import TrainConfig
from mirl_lib.net.promptir import build_model
from mirl_lib.training.loop import train

class Counting(FakeSource):
    seen = []

    def batch(self, step, batch_size, rank=0, world_size=1):
        self.seen.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return super().batch(step, batch_size, rank, world_size)


cfg = TrainConfig(steps=7, batch_size=8, warmup_steps=2, device="cpu", threads=1,
                  checkpoint_every=100, log_every=100, malloc=sys.argv[1])
model = build_model("cpu", seed=0)
train(model, cfg, Counting(patch=32), sys.argv[2], seed=0)
faults = Counting.seen[-1] - Counting.seen[-5]
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
print(json.dumps({"digest": digest.hexdigest(), "faults": faults,
                  "malloc": allocator.current()}))
"""


def test_modes_and_config_key() -> None:
    with pytest.raises(ValueError, match="jemalloc"):
        allocator.apply("jemalloc")
    with pytest.raises(ConfigError, match="train.malloc.*'jemalloc'.*auto or system"):
        TrainConfig(malloc="jemalloc")
    assert allocator.apply("system") == allocator.current()  # system changes nothing
    # a runtime setting: the run's identity (and so its folder and resume) does not change
    base = config_from_dict({})
    other = config_from_dict({"train": {"malloc": "system"}})
    assert base.identity() == other.identity() and base.hash() == other.hash()


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_allocator_saves_page_faults_and_changes_no_float(tmp_path: Path) -> None:
    runs = {}
    for mode in ("system", "auto"):
        done = subprocess.run([sys.executable, "-c", TRAIN, mode, str(tmp_path / mode),
                               str(ROOT / "tests" / "training")], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["system"]["malloc"] == "system" and runs["auto"]["malloc"] == "tuned"
    assert runs["auto"]["digest"] == runs["system"]["digest"]  # bit for bit the same weights
    assert runs["auto"]["faults"] < runs["system"]["faults"] / 3, runs
