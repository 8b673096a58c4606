"""Layer collapse of a pruned network: empty tensors and whether every input-to-output path is cut
(``collapse``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from mirl_lib.core.device import torch_threads
from mirl_lib.pruning.masks import Mask, check_fits


def collapse(model: nn.Module, mask: Mask, probe_side: int = 32, probes: int = 2,
             seed: int = 0) -> dict[str, object]:
    """Layer collapse under ``mask``: which prunable tensors are empty, and whether the input image
    still reaches the output through the network body.

    Returns ``{"prunable_tensors": n, "empty_tensors": k, "empty_names": [...], "path_cut": bool}``:
    ``empty_*`` are the mask's tensors with no kept weight (mask order); ``path_cut`` is True when
    the network, with the pruned weights exactly 0, returns its input plus something that does not
    depend on the input (PromptIR ends with ``output(...) + image``), i.e. every path from the
    image through the body to the output is cut.

    How ``path_cut`` is decided (``model`` itself is never changed): a deep copy gets the pruned
    weights set to exactly 0, goes to eval mode with no parameter gradients, and runs ``probes``
    random images (uniform in [0, 1), ``probe_side`` square, seeded by ``seed``). The input
    gradient of ``sum((out - x) * r)`` for a random normal ``r`` is ``J(x)^T r``, ``J`` the
    Jacobian of the body ``out - x``; the path is cut when it is exactly 0.0 in every element of
    every probe.

    Why this is exact: a cut path means every route from the image meets a weight that is exactly
    0, so every gradient term through it is a product with an exact 0 and the sums of such terms
    are exactly 0.0 in floating point (no rounding makes a nonzero). Conversely, when some path
    survives, the body is a real-analytic function of the image (convolutions, linear layers,
    LayerNorm away from zero variance, softmax, GELU, L2 normalization, bilinear resizing: no
    piecewise-flat ReLU regions) that is not constant, so ``J(x)`` vanishes only on a set of
    measure zero and a random ``x`` avoids it almost surely; given ``J(x) != 0``, ``J(x)^T r = 0``
    only for ``r`` in a proper subspace, again of measure zero. (A structurally surviving path
    whose weights cancel exactly yields a body that truly ignores its input; it is then reported as
    cut, which is the functional truth.)

    Precision: the exact-zero argument holds in any precision, so a nonzero gradient in float32
    already proves a live path; that fast probe settles the common case. All-zero float32
    gradients are confirmed in float64 (float32 only on MPS, which lacks float64), so a true but
    tiny gradient that underflowed in float32 is not mistaken for a cut. (Float64 convolutions are
    slow on CPU, grouped ones especially, so a cut takes a few times longer to confirm than a live
    path; on CPU the probes run on one thread, restored afterwards.) Non-finite gradients raise
    ``ValueError``.

    The residual ``+ image`` would make the gradient ``J^T r + r - r``, and that cancellation can
    round a tiny body gradient away. So while probing, every leaf module (one without children)
    that receives the probe image itself gets an equal copy of it that the residual does not use;
    the body's gradient then arrives on that copy untouched by the residual, and both gradients must
    be 0. (Image uses outside leaf modules still count, through the cancelled sum.)
    """
    check_fits(mask, model)
    if probe_side < 1 or probes < 1:
        raise ValueError(f"collapse: probe_side and probes must be positive, got {probe_side}, "
                         f"{probes}")
    empty = [name for name, keep in mask.items() if not bool(keep.any())]
    return {"prunable_tensors": len(mask), "empty_tensors": len(empty), "empty_names": empty,
            "path_cut": _path_cut(model, mask, probe_side, probes, seed)}


def _path_cut(model: nn.Module, mask: Mask, side: int, probes: int, seed: int) -> bool:
    """True when the input gradient of the masked body is exactly zero for every probe."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    probe = copy.deepcopy(model).eval()
    params = dict(probe.named_parameters())
    for param in params.values():
        param.requires_grad_(False)
        param.grad = None
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].masked_fill_(~keep.to(params[name].device), 0)
    # A nonzero input gradient proves a live path in any precision (a cut path gives exact zeros
    # in every precision), so the fast float32 probe settles the common case; all-zero (or
    # non-finite) float32 gradients are confirmed in float64, where no true gradient underflows.
    narrow = {torch.float32, torch.float16, torch.bfloat16}
    exact = all(p.dtype in narrow for p in probe.parameters())  # float32 holds them exactly
    fast = probe if exact else copy.deepcopy(probe)  # keep float64 weights for the confirmation
    # The probes are a few small images: on CPU one thread is as fast as several, and several
    # stall badly on a busy machine (float64 grouped convolutions run one small op per group).
    with torch_threads(1 if device.type == "cpu" else 0):
        verdict = _input_gradient_is_zero(fast.float(), side, probes, seed, device, torch.float32)
        if verdict is not False and device.type != "mps":  # MPS has no float64
            verdict = _input_gradient_is_zero(probe.double(), side, probes, seed, device,
                                              torch.float64)
    if verdict is None:
        raise ValueError("collapse: the masked model gives non-finite gradients on the probes")
    return verdict


def _input_gradient_is_zero(model: nn.Module, side: int, probes: int, seed: int,
                            device: torch.device, dtype: torch.dtype) -> bool | None:
    """Whether the body's input gradient is exactly 0 on every probe (``None``: not finite)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (probes, 3, side, side)
    image = torch.rand(shape, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    projection = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    body_image = image.detach().clone().requires_grad_(True)

    def substitute(_module: nn.Module, args: tuple) -> tuple | None:
        if any(a is image for a in args):
            return tuple(body_image if a is image else a for a in args)
        return None

    leaves = [m for m in model.modules() if m is not model and not list(m.children())]
    handles = [m.register_forward_pre_hook(substitute) for m in leaves]
    try:
        with torch.enable_grad():
            out = model(image)
            if out.shape != image.shape:
                raise ValueError(f"collapse: the model maps {tuple(image.shape)} to "
                                 f"{tuple(out.shape)}; it must keep its input's shape")
            ((out - image) * projection).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    grads = [g for g in (image.grad, body_image.grad) if g is not None]
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        return None
    return all(bool((g == 0).all()) for g in grads)
