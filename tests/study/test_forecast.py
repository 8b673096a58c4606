"""The wall-clock forecast: the runner's schedule of the stage graph with each stage's trainings'
hours, bounded below by the critical path and above by the trainings one after another."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from smoke import SMOKE, smoke_study

from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.study.forecast import forecast
from mirl_lib.study.graph import stage_list


def test_one_gpu_trains_everything_in_turn_and_many_reach_the_critical_path(
        tmp_path: Path) -> None:
    study = smoke_study(tmp_path)
    trainings = sum(len(s.points) for s in stage_list(study))
    rounds = study.cfg.prune.rounds
    one = forecast(study, 2.0, gpus=1)
    many = forecast(study, 2.0, gpus=100)
    assert one.trainings == trainings and one.hours == pytest.approx(2.0 * trainings)
    assert one.gpu_hours == pytest.approx(2.0 * trainings)
    # the longest chain: the dense network and every trunk round, one after another
    assert many.critical_hours == pytest.approx(2.0 * (rounds + 1))
    assert many.hours == pytest.approx(many.critical_hours)
    assert many.critical_path[:rounds + 1] == ("dense", *(f"round_{r:02d}" for r in
                                                           range(1, rounds + 1)))[:rounds + 1]
    two = forecast(study, 2.0, gpus=2)
    assert many.hours <= two.hours <= one.hours


def test_seeds_run_side_by_side_and_a_stage_s_gpus_shorten_its_trainings(
        tmp_path: Path) -> None:
    one_seed = forecast(smoke_study(tmp_path), 3.0, gpus=64)
    seeds = forecast(smoke_study(tmp_path, study={"seeds": [0, 1, 2]}), 3.0, gpus=64)
    assert seeds.trainings == 3 * one_seed.trainings
    assert seeds.hours == pytest.approx(one_seed.hours)  # three chains beside each other
    eight = forecast(smoke_study(tmp_path), 3.0, gpus=64, gpus_per_stage=8)
    assert eight.hours == pytest.approx(one_seed.hours / 8)
    half = forecast(smoke_study(tmp_path), 3.0, gpus=64, gpus_per_stage=8, scaling=0.5)
    assert half.hours == pytest.approx(one_seed.hours / 4)
    assert half.gpu_hours == pytest.approx(2 * one_seed.gpu_hours)


@pytest.mark.parametrize("kwargs, word", [({"hours_per_training": 0.0, "gpus": 1}, "hours"),
                                          ({"hours_per_training": 1.0, "gpus": 4,
                                            "gpus_per_stage": 8}, "--gpus 4"),
                                          ({"hours_per_training": 1.0, "gpus": 4,
                                            "scaling": 1.5}, "--scaling")])
def test_impossible_settings_are_refused(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        forecast(smoke_study(tmp_path), **kwargs)


@pytest.mark.slow
def test_the_command_prices_a_params_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mirl_lib", "stages", "forecast", str(SMOKE),
                           "--results", str(tmp_path), "--hours-per-training", "10", "--gpus",
                           "1", "100"], capture_output=True, text=True, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    study = smoke_study(tmp_path)
    trainings = sum(len(s.points) for s in stage_list(study))
    assert len(lines) == 4
    assert lines[0].startswith(f"{trainings} trainings, {10 * trainings} GPU-hours; 1 GPU(s)")
    assert lines[3].startswith(f"critical path {10 * (study.cfg.prune.rounds + 1)} h")
