"""Does the dense network learn every task? Its paired gains over the degraded inputs with intervals
(``dense_gains``) and the bars it must clear (``dense_bars``).
"""
from __future__ import annotations

import pandas as pd

from mirl_lib.core.names import ALL_IN_ONE, DENSE
from mirl_lib.report.intervals import LEVEL, paired_intervals, photo_column

# The full tier's bars for the dense network on the bundled test photos: at least this PSNR gain
# over the degraded input on every task, and a higher SSIM than the input on every task. On the
# held-out photos it must beat the input (gain > 0) on every task.
DENSE_MIN_GAIN_DB = 3.0


def dense_gains(metrics: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """The dense network against the degraded inputs, per task and all-in-one: the paired PSNR gain
    and SSIM change (dense − input, same seed and image) with crossed intervals over seeds and
    photos (``intervals.paired_intervals``). Columns: task, gain_db, gain_low, gain_high,
    ssim_change, ssim_low, ssim_high, seeds, photos, images, and the PSNR gain's se and df (the
    reproduction check's prediction intervals use them)."""
    columns = ["task", "gain_db", "gain_low", "gain_high", "ssim_change", "ssim_low", "ssim_high",
               "seeds", "photos", "images", "gain_se", "gain_df", "gain_ms_seed"]
    dense = metrics[metrics["strategy"] == DENSE]
    if dense.empty:
        return pd.DataFrame(columns=columns)
    key = dense["dataset"].astype(str) + "/" + dense["image"].astype(str)
    out = None
    for metric, name in (("psnr", "gain"), ("ssim", "ssim")):
        diffs = pd.DataFrame({"seed": dense["seed"], "task": dense["task"],
                              "photo": photo_column(dense), "image": key,
                              "diff": dense[metric] - dense[f"input_{metric}"]})
        res = paired_intervals(diffs, level)
        col = "gain_db" if name == "gain" else "ssim_change"
        res = res.rename(columns={"difference": col, "ci_low": f"{name}_low",
                                  "ci_high": f"{name}_high", "se": f"{name}_se",
                                  "df": f"{name}_df", "ms_seed": f"{name}_ms_seed"})
        keep = ["task", col, f"{name}_low", f"{name}_high"]
        out = (res[keep + ["seeds", "photos", "images", "gain_se", "gain_df", "gain_ms_seed"]]
               if out is None else out.merge(res[keep], on="task"))
    return out[columns]


def dense_bars(test: pd.DataFrame, heldout: pd.DataFrame | None = None) -> list[str]:
    """Whether the dense network learns every task, as sentences computed from ``dense_gains``
    tables (``test``: the bundled test photos, ``heldout``: the held-out check)."""
    per_task = test[test["task"] != ALL_IN_ONE]
    gain_ok = per_task[per_task["gain_db"] >= DENSE_MIN_GAIN_DB]["task"].tolist()
    ssim_ok = per_task[per_task["ssim_change"] > 0]["task"].tolist()
    missed = [t for t in per_task["task"] if t not in gain_ok or t not in ssim_ok]
    sentences = [
        f"Dense network on the test photos: PSNR gain ≥ +{DENSE_MIN_GAIN_DB:.0f} dB on "
        f"{len(gain_ok)} of {len(per_task)} tasks, SSIM above the input on {len(ssim_ok)} of "
        f"{len(per_task)}; " + ("it learns every task." if not missed else
                                "it does not yet learn every task (short on "
                                + ", ".join(missed) + ").")]
    if heldout is not None and len(heldout):
        held = heldout[heldout["task"] != ALL_IN_ONE]
        beaten = held[held["gain_db"] > 0]["task"].tolist()
        lost = [t for t in held["task"] if t not in beaten]
        sentences.append(
            f"On the held-out photos (unseen photos, out-of-range rain and haze) it beats the "
            f"degraded input on {len(beaten)} of {len(held)} tasks"
            + ("." if not lost else f" (not on {', '.join(lost)})."))
    return sentences


def gains_table(gains: pd.DataFrame) -> list[str]:
    lines = ["| task | PSNR gain [95% CI] | SSIM change [95% CI] |", "|---|---|---|"]
    for r in gains.itertuples():
        lines.append(f"| {r.task} | {r.gain_db:+.2f} [{r.gain_low:+.2f}, {r.gain_high:+.2f}] | "
                     f"{r.ssim_change:+.4f} [{r.ssim_low:+.4f}, {r.ssim_high:+.4f}] |")
    return lines
