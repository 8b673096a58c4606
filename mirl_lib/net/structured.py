"""Structured networks: a PromptIR of a config's depth whose layers are narrower than it says.

A structured ticket (``mirl_lib.pruning.channels``) removes whole coupled channel groups, so its
weights are an ordinary ``state_dict`` of smaller tensors: a physically smaller, dense network with
no mask. Its ``ModelConfig`` is the network it was pruned from (depth, heads per level, prompt
length and sizes); the widths are the tensors' own. Weights files and tickets of such a network
record ``structured: true`` in their meta (``STRUCTURED``), and ``mirl_lib.net.checkpoints`` builds
them with ``shaped``.

- ``shaped(cfg, shapes)``: ``PromptIR(cfg)`` with every layer resized to ``shapes`` (parameter
  name -> shape); its attention modules take their head count from ``temperature``.
- ``misfit(cfg, state)``: why ``state`` is not a structured PromptIR of ``cfg`` (other parameter
  names, other tensor ranks, or widths that do not join up: a forward pass on the meta device, which
  allocates nothing, fails), or None.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mirl_lib.core.config import SIZE_MULTIPLE, ModelConfig
from mirl_lib.net.promptir import Attention, NormBody, PromptGenBlock, PromptIR
from mirl_lib.net.sizing import skeleton

# The meta key that marks a weights file or ticket as holding a structured (narrower) network.
STRUCTURED = "structured"


def shaped(cfg: ModelConfig, shapes: Mapping[str, Sequence[int]],
           device: str | torch.device = "cpu") -> PromptIR:
    """``PromptIR(cfg)`` with each parameter resized to ``shapes[name]`` (values uninitialized:
    load a ``state_dict`` into it). ``KeyError`` names a parameter that ``shapes`` lacks."""
    with torch.device(device):
        net = PromptIR(cfg)
        for name, module in net.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, nn.Conv2d):
                _resize_conv(module, prefix, shapes)
            elif isinstance(module, nn.Linear):
                weight = tuple(shapes[f"{prefix}weight"])
                module.out_features, module.in_features = weight
                module.weight = nn.Parameter(torch.empty(weight))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(tuple(shapes[f"{prefix}bias"])))
            elif isinstance(module, Attention):
                temperature = tuple(shapes[f"{prefix}temperature"])
                module.heads = temperature[0]
                module.temperature = nn.Parameter(torch.empty(temperature))
            elif isinstance(module, NormBody):
                module.weight = nn.Parameter(torch.empty(tuple(shapes[f"{prefix}weight"])))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(tuple(shapes[f"{prefix}bias"])))
            elif isinstance(module, PromptGenBlock):
                module.prompt_param = nn.Parameter(
                    torch.empty(tuple(shapes[f"{prefix}prompt_param"])))
    return net


def _resize_conv(conv: nn.Conv2d, prefix: str, shapes: Mapping[str, Sequence[int]]) -> None:
    weight = tuple(shapes[f"{prefix}weight"])
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    conv.out_channels = weight[0]
    if depthwise:  # one filter per channel: the group count follows the width
        conv.groups = conv.in_channels = weight[0]
    else:
        conv.in_channels = weight[1] * conv.groups
    conv.weight = nn.Parameter(torch.empty(weight))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.empty(tuple(shapes[f"{prefix}bias"])))


def build(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> PromptIR:
    """The structured network holding ``state`` (strict load), on the CPU."""
    net = shaped(cfg, {k: tuple(v.shape) for k, v in state.items()})
    net.load_state_dict(dict(state), strict=True)
    return net


def misfit(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` is not a structured PromptIR of ``cfg``, or None when it is one."""
    full = skeleton(cfg).state_dict()
    missing = [k for k in full if k not in state]
    unexpected = [k for k in state if k not in full]
    if missing or unexpected:
        return (f"{len(missing)} missing key(s), first {missing[:3]}; {len(unexpected)} "
                f"unexpected key(s), first {unexpected[:3]}")
    rank = [k for k in full if full[k].dim() != state[k].dim()]
    if rank:
        return (f"{rank[0]} has {state[rank[0]].dim()} dimensions, the network's has "
                f"{full[rank[0]].dim()}")
    grown = [k for k in full if any(s > f for s, f in zip(state[k].shape, full[k].shape))]
    if grown:
        return (f"{grown[0]} is {tuple(state[grown[0]].shape)}, wider than the unpruned "
                f"network's {tuple(full[grown[0]].shape)}")
    net = shaped(cfg, {k: tuple(v.shape) for k, v in state.items()}, device="meta")
    side = 2 * SIZE_MULTIPLE
    try:
        net(torch.empty(1, 3, side, side, device="meta"))
    except RuntimeError as exc:  # widths that do not join up
        return f"its layer widths do not join up ({str(exc).splitlines()[0]})"
    return None


def is_structured(net: torch.nn.Module) -> bool:
    """Whether ``net`` is narrower than ``PromptIR(net.config)`` (a structured network)."""
    net = getattr(net, "module", net)
    full = skeleton(net.config).state_dict()
    return any(tuple(v.shape) != tuple(full[k].shape) for k, v in net.state_dict().items())
