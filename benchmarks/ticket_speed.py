"""How fast a ticket runs: dense network, unstructured ticket, small dense and structured ticket.

At matched total parameter counts (the trunk rounds nearest ``--remaining``, default 50%, 20%
and 10% of all parameters) four networks of a params file's architecture:

- ``dense``: the dense network;
- ``unstructured``: the trunk's ticket (the dense architecture, its pruned weights zero);
- ``small_dense``: the small-dense control's narrowed PromptIR (``net.sizing.narrowed``);
- ``structured``: the structured ticket (``pruning.channels``), a physically narrower PromptIR.

Weights come from ``--run`` (a run folder, seed ``--seed``) where it holds them: the dense network's
and trunk's tickets and the ``channel_rewind`` chain's. Where it does not, the benchmark makes
them from the dense network (the run's, else a seeded initialization): the unstructured ticket as a
global magnitude mask of it at the round's kept count, the structured one by removing channel
units of it by importance to the round's parameter count; the ``source`` column says which.
Speed does not depend on the values of the weights, only on the widths and on what the kernels
multiply.

Per network and thread count: the median and 90th percentile of ``--repeats`` forward passes of
one ``--side`` x ``--side`` image (after one untimed pass; networks take turns, so background load
touches them alike), the speed-up over the dense network's median, the training step (batch
``train.batch_size`` of ``data.patch_size`` patches, AdamW, the loss of ``mirl_lib.training``,
unstructured tickets with their mask enforced) and the peak memory of one forward pass over the
network's own weights (a child process per network: its ``VmHWM`` less its ``VmRSS`` before the
pass). On a CUDA GPU (``--device cuda``) the same, timed with synchronisation, peak memory from
``torch.cuda.max_memory_allocated``. Rows go to ``results/benchmarks/ticket_speed.csv`` (rows of
other devices, params files and sides kept)::

    python benchmarks/ticket_speed.py [--params params/full.yaml] [--run results/full]
        [--remaining 0.5,0.2,0.1] [--side 512] [--threads 1,2] [--repeats 5] [--out CSV]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchrows import merge_rows, one_line  # noqa: E402

from mirl_lib.core.config import Config, load_config  # noqa: E402
from mirl_lib.core.device import device_name, resolve_device  # noqa: E402
from mirl_lib.core.errors import ConfigError, MirlError  # noqa: E402
from mirl_lib.core.names import DENSE, TRUNK  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.files.paths import (  # noqa: E402
    BENCHMARK_RESULTS,
    TICKET_FILE,
    TICKET_SPEED_FILE,
    point_dir,
    run_dir,
)
from mirl_lib.net import structured  # noqa: E402
from mirl_lib.net.checkpoints import load_model  # noqa: E402
from mirl_lib.net.promptir import build_model  # noqa: E402
from mirl_lib.pruning import channels, masks, rules  # noqa: E402
from mirl_lib.pruning.plan import plan_table  # noqa: E402
from mirl_lib.study.strategies import REGISTRY  # noqa: E402
from mirl_lib.training.losses import restoration_loss  # noqa: E402

DEFAULT_OUT = BENCHMARK_RESULTS / TICKET_SPEED_FILE
DEFAULT_PARAMS = ROOT / "params" / "full.yaml"
COLUMNS: tuple[str, ...] = (
    "date", "device", "device_type", "torch", "params_file", "threads", "side", "network",
    "strategy", "round",
    "remaining_all", "parameters", "source", "forward_ms", "forward_p90_ms", "forward_speedup",
    "train_ms_per_step", "train_speedup", "peak_forward_mb", "repeats")
KINDS = ("dense", "unstructured", "small_dense", "structured")
STRUCTURED_STRATEGY = next(n for n, s in REGISTRY.items()
                           if type(s).network is not type(REGISTRY[DENSE]).network)
SMALL_DENSE_STRATEGY = next(n for n, s in REGISTRY.items()
                            if type(s).model_config is not type(REGISTRY[DENSE]).model_config)
KIND_STRATEGY = {"dense": DENSE, "unstructured": TRUNK, "small_dense": SMALL_DENSE_STRATEGY,
                 "structured": STRUCTURED_STRATEGY}  # the study's point each network stands for
QUICK_REPEATS = 1


def completed(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``strategy`` and ``device_type`` filled where rows written before those
    columns existed lack them (from ``network``; ``cuda`` for an NVIDIA device, else ``cpu``)."""
    rows = rows.copy()
    rows["strategy"] = rows["strategy"].fillna(rows["network"].map(KIND_STRATEGY))
    legacy = rows["device"].astype(str).str.startswith("NVIDIA").map({True: "cuda", False: "cpu"})
    rows["device_type"] = rows["device_type"].fillna(legacy)
    return rows


@dataclass
class Network:
    """One benchmarked network: kind, trunk round, where its weights came from, model, mask."""

    kind: str
    round: int
    source: str
    model: torch.nn.Module
    mask: masks.Mask | None = None

    @property
    def parameters(self) -> int:
        """Its parameters, an unstructured ticket's pruned weights not counted."""
        total = sum(p.numel() for p in self.model.parameters())
        if self.mask is None:
            return total
        return total - sum(m.numel() for m in self.mask.values()) + sum(
            int(m.sum()) for m in self.mask.values())


def rounds_for(cfg: Config, remaining: list[float]) -> list[int]:
    """The trunk rounds nearest each remaining fraction of all parameters (as the study's
    branch rounds are chosen)."""
    plan = plan_table(cfg.model, cfg.prune)[lambda d: d["round"] > 0]
    return sorted({int(plan.loc[(plan["remaining_all"] - t).abs().idxmin(), "round"])
                   for t in remaining})


def _ticket(run: Path | None, seed: int, strategy: str, rnd: int) -> Path | None:
    if run is None:
        return None
    path = point_dir(run, seed, strategy, rnd) / TICKET_FILE
    return path if path.is_file() else None


def networks(cfg: Config, run: Path | None, seed: int, rounds: list[int]) -> list[Network]:
    """The dense network and, per round, the unstructured ticket, small dense and structured
    ticket (from ``run`` where it holds them, else made from the dense network)."""
    found = _ticket(run, seed, DENSE, 0)
    if found:
        dense, _ = load_model(found, expected=cfg.model)
        dense_source = str(found)
    else:
        dense, dense_source = build_model(cfg.model, seed=seed), f"initialization seed {seed}"
    state = dense.state_dict()
    table = channels.groups(dense)
    out = [Network("dense", 0, dense_source, dense)]
    plan = plan_table(cfg.model, cfg.prune).set_index("round")
    for rnd in rounds:
        found = _ticket(run, seed, TRUNK, rnd)
        if found:
            model, meta = load_model(found, expected=cfg.model)
            out.append(Network("unstructured", rnd, str(found), model, meta["mask"]))
        else:
            full = masks.full_mask(dense, cfg.prune.scope)
            keep = rules.global_magnitude(state, full, 1 - int(plan.at[rnd, "kept"]) / int(
                plan.at[rnd, "prunable"]))
            model = build_model(cfg.model)
            model.load_state_dict({k: v * keep[k] if k in keep else v for k, v in state.items()})
            out.append(Network("unstructured", rnd, "magnitude mask of the dense network", model,
                               keep))
        small_cfg = REGISTRY[SMALL_DENSE_STRATEGY].model_config(cfg, rnd)
        out.append(Network("small_dense", rnd, f"narrowed dim {small_cfg.dim}",
                           build_model(small_cfg, seed=seed)))
        found = _ticket(run, seed, STRUCTURED_STRATEGY, rnd)
        if found:
            model, _ = load_model(found, expected=cfg.model)
            out.append(Network("structured", rnd, str(found), model))
        else:
            removed = channels.cut(state, table, channels.empty_selection(table),
                                   REGISTRY[STRUCTURED_STRATEGY].target(cfg, rnd),
                                   cfg.prune.channel_importance, cfg.prune.channel_method)
            model = structured.build(cfg.model, channels.prune_state(state, table, removed))
            out.append(Network("structured", rnd, "channels of the dense network by importance",
                               model))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forwards(nets: list[Network], side: int, repeats: int, device: torch.device
                  ) -> dict[int, list[float]]:
    """Milliseconds of ``repeats`` forward passes per network (one untimed first), in turns."""
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[int, list[float]] = {i: [] for i in range(len(nets))}
    with torch.no_grad():
        for net in nets:
            net.model.to(device).eval()(image)
        for _ in range(repeats):
            for i, net in enumerate(nets):
                _sync(device)
                started = time.perf_counter()
                net.model(image)
                _sync(device)
                times[i].append((time.perf_counter() - started) * 1000)
    return times


def time_train_steps(nets: list[Network], cfg: Config, repeats: int, device: torch.device
                     ) -> dict[int, float]:
    """Median milliseconds of a training step per network (one untimed step first)."""
    gen = torch.Generator().manual_seed(1)
    batch = cfg.train.batch_size
    degraded, clean = (torch.rand(batch, 3, cfg.data.patch_size, cfg.data.patch_size,
                                  generator=gen).to(device) for _ in range(2))
    out = {}
    for i, net in enumerate(nets):
        model = build_model(net.model.config) if not structured.is_structured(net.model) else \
            structured.shaped(net.model.config, {k: v.shape for k, v in
                                                 net.model.state_dict().items()})
        model.load_state_dict(net.model.state_dict())
        model.to(device).train()
        enforcer = masks.MaskEnforcer(model, net.mask) if net.mask is not None else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        times = []
        for step in range(repeats + 1):
            _sync(device)
            started = time.perf_counter()
            loss = restoration_loss(model(degraded), clean, cfg.train.ssim_weight,
                                    cfg.train.psnr_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            if step:
                times.append((time.perf_counter() - started) * 1000)
        if enforcer is not None:
            enforcer.remove()
        out[i] = statistics.median(times)
    return out


def peak_forward_mb(net: Network, side: int, device: torch.device) -> float:
    """Peak memory of one forward pass beyond the weights: on CUDA ``max_memory_allocated``, on
    the CPU a child process's ``VmHWM`` less its ``VmRSS`` before the pass."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            net.model.to(device)(torch.rand(1, 3, side, side, device=device))
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "net.pt"
        torch.save({"config": net.model.config.__dict__, "state": net.model.state_dict()},
                   weights)
        done = subprocess.run([sys.executable, __file__, "--child", str(weights), str(side)],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MirlError(f"the memory probe of {net.kind} round {net.round} failed: "
                        f"{done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _child(weights: str, side: int) -> None:
    """The memory probe: load the network, read VmRSS, one forward pass, print VmHWM - VmRSS."""
    from mirl_lib.core.config import model_config

    torch.set_num_threads(1)
    saved = torch.load(weights, weights_only=True)
    model = structured.build(model_config(saved["config"]), saved["state"]).eval()
    image = torch.rand(1, 3, side, side)

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise MirlError(f"/proc/self/status has no {key}")

    before = status("VmRSS")
    with torch.no_grad():
        model(image)
    print(f"{status('VmHWM') - before:.1f}")


def parse_list(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: not a comma-separated list of "
                          f"{kind.__name__}") from None
    if not values:
        raise ConfigError(f"{flag}: nothing given")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help="params file: architecture, pruning plan, training step "
                             "(default: params/full.yaml)")
    parser.add_argument("--run", type=Path, default=None,
                        help="run folder with the tickets (default: results/<study.name> when "
                             "it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run's tickets")
    parser.add_argument("--remaining", default="0.5,0.2,0.1",
                        help="remaining fractions of all parameters (default: 0.5,0.2,0.1)")
    parser.add_argument("--side", type=int, default=512, help="image side (default: 512)")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed passes and steps per network (default: 5; {QUICK_REPEATS} "
                             f"with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="one pass each: checks the script works, not worth keeping")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="CSV to write (default: results/benchmarks/ticket_speed.csv)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure, write the CSV after each thread count, print the table; 2 with one ``error:``
    line on bad input (nothing written), 130 on Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
        return 0
    args = _parser().parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else 5)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    threads_before = torch.get_num_threads()
    try:
        if repeats < 1 or args.side < 8 or args.side % 8:
            raise ConfigError(f"--repeats {repeats} / --side {args.side}: need repeats >= 1 and a "
                              f"side that is a positive multiple of 8")
        cfg = load_config(args.params)
        remaining = parse_list(args.remaining, float, "--remaining")
        if not all(0 < r < 1 for r in remaining):
            raise ConfigError(f"--remaining {args.remaining!r}: fractions must lie in (0, 1)")
        threads = parse_list(args.threads, int, "--threads")
        if min(threads) < 1:
            raise ConfigError(f"--threads {args.threads!r}: thread counts must be at least 1")
        device = resolve_device(args.device)
        run = args.run if args.run is not None else run_dir(ROOT / "results", cfg.study.name)
        if args.run is not None and not args.run.is_dir():
            raise ConfigError(f"--run {args.run}: no such run folder")
        merge_rows(pd.DataFrame(columns=list(COLUMNS)), args.out, ("device",), COLUMNS,
                   "ticket_speed")  # an unreadable CSV fails before anything is measured
        rounds = rounds_for(cfg, remaining)
        nets = networks(cfg, run if run.is_dir() else None, args.seed, rounds)
        dense_total = nets[0].parameters
        name = device_name(device)
        log(f"{name}, torch {torch.__version__}: {len(nets)} networks at rounds {rounds}, "
            f"{args.side}x{args.side}, {repeats} passes each")
        peaks = {i: peak_forward_mb(n, args.side, device) for i, n in enumerate(nets)}
        rows: list[dict] = []
        for count in (threads if device.type == "cpu" else [threads[0]]):
            torch.set_num_threads(count)
            log(f"threads {count}: forward passes ...")
            forward = time_forwards(nets, args.side, repeats, device)
            log(f"threads {count}: training steps ...")
            train = time_train_steps(nets, cfg, repeats, device)
            base_f, base_t = statistics.median(forward[0]), train[0]
            for i, net in enumerate(nets):
                median = statistics.median(forward[i])
                rows.append({
                    "date": datetime.date.today().isoformat(), "device": name,
                    "device_type": device.type, "torch": torch.__version__,
                    "params_file": args.params.name, "threads": count, "side": args.side,
                    "network": net.kind, "strategy": KIND_STRATEGY[net.kind], "round": net.round,
                    "remaining_all": round(net.parameters / dense_total, 4),
                    "parameters": net.parameters, "source": net.source,
                    "forward_ms": round(median, 1),
                    "forward_p90_ms": round(sorted(forward[i])[int(0.9 * (repeats - 1))], 1),
                    "forward_speedup": round(base_f / median, 2),
                    "train_ms_per_step": round(train[i], 1),
                    "train_speedup": round(base_t / train[i], 2),
                    "peak_forward_mb": round(peaks[i], 1), "repeats": repeats})
                log(f"  {net.kind:12s} r{net.round:<2d} {rows[-1]['remaining_all']:6.1%}  "
                    f"forward {median:8.1f} ms (x{rows[-1]['forward_speedup']:.2f})  train "
                    f"{train[i]:7.1f} ms (x{rows[-1]['train_speedup']:.2f})  peak "
                    f"{peaks[i]:.0f} MB")
            table = pd.DataFrame(rows, columns=list(COLUMNS))
            merged = completed(merge_rows(table, args.out, ("device", "params_file", "side"),
                                          COLUMNS, "ticket_speed"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(merged.to_csv(index=False), args.out)
    except KeyboardInterrupt:
        log(f"interrupted: the thread counts measured so far are in {args.out}")
        return 130
    except (MirlError, OSError) as exc:
        print(f"error: {one_line(exc) if not isinstance(exc, MirlError) else exc}",
              file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads_before)
    shown = ["threads", "network", "round", "remaining_all", "forward_ms", "forward_speedup",
             "train_ms_per_step", "train_speedup", "peak_forward_mb"]
    print(table[shown].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
