"""PromptIR, the all-in-one restoration network with prompt blocks in the decoder.

Built from a ``ModelConfig`` so every width derives from ``dim`` and the prompt settings. With the
``paper`` preset the parameter names, shapes and order equal the published network's (see
``tests/test_model.py``, which checks them and a float64 forward fingerprint).

Channel widths at each level are ``dim * (1, 2, 4, 8)``. The decoder inserts a prompt block before
each upsampling: its prompt (``prompt_dims[i]`` channels) is concatenated to the features, mixed by
a transformer block and reduced back. The six 1x1 convolutions ``chnl_reduce*`` and
``reduce_noise_channel_*`` exist in the published checkpoints but the forward pass never uses them;
``unused_convs=True`` keeps them so those checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirl_lib.core.config import ModelConfig, model_config


class LayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels of a (B, C, H, W) tensor, with or without bias."""

    def __init__(self, channels: int, with_bias: bool) -> None:
        super().__init__()
        self.body = NormBody(channels, with_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class NormBody(nn.Module):
    def __init__(self, channels: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if with_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:  # scale by the standard deviation, no centring
            var = torch.var(x, dim=1, keepdim=True, unbiased=False)
            return x / torch.sqrt(var + 1e-5) * self.weight.view(1, -1, 1, 1)
        channels_last = x.permute(0, 2, 3, 1)
        out = F.layer_norm(channels_last, (x.shape[1],), self.weight, self.bias, 1e-5)
        return out.permute(0, 3, 1, 2)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention: attention across channels, per head."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # q, k and v are as wide as the features in PromptIR; a structured ticket
        # (``net.structured``) may have removed whole heads, so the width is read from q
        c = q.shape[1]
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network with GELU gating."""

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, heads: int, cfg: ModelConfig) -> None:
        super().__init__()
        with_bias = cfg.layernorm_type == "WithBias"
        self.norm1 = LayerNorm(dim, with_bias)
        self.attn = Attention(dim, heads, cfg.bias)
        self.norm2 = LayerNorm(dim, with_bias)
        self.ffn = FeedForward(dim, cfg.ffn_expansion_factor, cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class PatchEmbed(nn.Module):
    """3x3 convolution from the image to ``dim`` feature channels."""

    def __init__(self, in_channels: int, dim: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Resample(nn.Module):
    """3x3 convolution then pixel (un)shuffle: halves (down) or doubles (up) the resolution."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__()
        out = channels // 2 if down else channels * 2
        shuffle = nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2)
        self.body = nn.Sequential(nn.Conv2d(channels, out, 3, padding=1, bias=False), shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PromptGenBlock(nn.Module):
    """Input-conditioned prompt: a softmax mix of learned prompt components, resized, convolved."""

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, lin_dim: int) -> None:
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size,
                                                    prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # (B, len)
        prompt = torch.einsum("bl,lchw->bchw", weights, self.prompt_param[0])
        prompt = F.interpolate(prompt, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)


def _blocks(n: int, dim: int, heads: int, cfg: ModelConfig) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(dim, heads, cfg) for _ in range(n)])


class PromptIR(nn.Module):
    """All-in-one restoration network; ``forward(x)`` returns the restored image (residual
    added)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d, nb, hd, b = cfg.dim, cfg.num_blocks, cfg.heads, cfg.bias
        p1, p2, p3 = cfg.prompt_dims
        s1, s2, s3 = cfg.prompt_sizes
        self.patch_embed = PatchEmbed(3, d, b)
        self.prompt1 = PromptGenBlock(p1, cfg.prompt_len, s1, lin_dim=2 * d)
        self.prompt2 = PromptGenBlock(p2, cfg.prompt_len, s2, lin_dim=4 * d)
        self.prompt3 = PromptGenBlock(p3, cfg.prompt_len, s3, lin_dim=8 * d)
        if cfg.unused_convs:
            self.chnl_reduce1 = nn.Conv2d(p1, p1, 1, bias=b)
            self.chnl_reduce2 = nn.Conv2d(p2, p2, 1, bias=b)
            self.chnl_reduce3 = nn.Conv2d(p3, 2 * p2, 1, bias=b)
            self.reduce_noise_channel_1 = nn.Conv2d(d + p1, d, 1, bias=b)
        self.encoder_level1 = _blocks(nb[0], d, hd[0], cfg)
        self.down1_2 = Resample(d, down=True)
        if cfg.unused_convs:
            self.reduce_noise_channel_2 = nn.Conv2d(2 * d + p2, 2 * d, 1, bias=b)
        self.encoder_level2 = _blocks(nb[1], 2 * d, hd[1], cfg)
        self.down2_3 = Resample(2 * d, down=True)
        if cfg.unused_convs:
            self.reduce_noise_channel_3 = nn.Conv2d(4 * d + 2 * p2, 4 * d, 1, bias=b)
        self.encoder_level3 = _blocks(nb[2], 4 * d, hd[2], cfg)
        self.down3_4 = Resample(4 * d, down=True)
        self.latent = _blocks(nb[3], 8 * d, hd[3], cfg)
        self.up4_3 = Resample(4 * d, down=False)
        self.reduce_chan_level3 = nn.Conv2d(2 * d + 4 * d, 4 * d, 1, bias=b)
        self.noise_level3 = TransformerBlock(8 * d + p3, hd[2], cfg)
        self.reduce_noise_level3 = nn.Conv2d(8 * d + p3, 4 * d, 1, bias=b)
        self.decoder_level3 = _blocks(nb[2], 4 * d, hd[2], cfg)
        self.up3_2 = Resample(4 * d, down=False)
        self.reduce_chan_level2 = nn.Conv2d(4 * d, 2 * d, 1, bias=b)
        self.noise_level2 = TransformerBlock(4 * d + p2, hd[2], cfg)
        self.reduce_noise_level2 = nn.Conv2d(4 * d + p2, 4 * d, 1, bias=b)
        self.decoder_level2 = _blocks(nb[1], 2 * d, hd[1], cfg)
        self.up2_1 = Resample(2 * d, down=False)
        self.noise_level1 = TransformerBlock(2 * d + p1, hd[2], cfg)
        self.reduce_noise_level1 = nn.Conv2d(2 * d + p1, 2 * d, 1, bias=b)
        self.decoder_level1 = _blocks(nb[0], 2 * d, hd[0], cfg)
        self.refinement = _blocks(cfg.num_refinement_blocks, 2 * d, hd[0], cfg)
        self.output = nn.Conv2d(2 * d, 3, 3, padding=1, bias=b)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        enc1 = self.encoder_level1(self.patch_embed(image))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        latent = torch.cat([latent, self.prompt3(latent)], 1)
        latent = self.reduce_noise_level3(self.noise_level3(latent))
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.decoder_level3(dec3)

        dec3 = torch.cat([dec3, self.prompt2(dec3)], 1)
        dec3 = self.reduce_noise_level2(self.noise_level2(dec3))
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.decoder_level2(dec2)

        dec2 = torch.cat([dec2, self.prompt1(dec2)], 1)
        dec2 = self.reduce_noise_level1(self.noise_level1(dec2))
        dec1 = torch.cat([self.up2_1(dec2), enc1], 1)
        dec1 = self.refinement(self.decoder_level1(dec1))
        return self.output(dec1) + image


UNUSED_PARAMETER_PREFIXES: tuple[str, ...] = (
    "chnl_reduce1.", "chnl_reduce2.", "chnl_reduce3.",
    "reduce_noise_channel_1.", "reduce_noise_channel_2.", "reduce_noise_channel_3.",
)


def build_model(spec: str | dict | ModelConfig = "paper", seed: int | None = None) -> PromptIR:
    """Build PromptIR from a preset name (``paper``, ``cpu``, ``tiny``), a dict or a
    ``ModelConfig``.

    With ``seed`` the initialization is reproducible (PyTorch's default initializers under a
    seeded generator state); the global RNG state is restored afterwards.
    """
    cfg = model_config(spec)
    if seed is None:
        return PromptIR(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PromptIR(cfg)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements."""
    return sum(p.numel() for p in model.parameters())
