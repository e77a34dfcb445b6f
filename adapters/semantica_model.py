"""Semantica's denoiser: a pixel-space U-ViT (simple diffusion) cross-attending to DINOv2 tokens.

Architecture (Semantica sec. 3.3-3.4 and 6.1; Hoogeboom et al. 2023): a patchifying convolution
(1x1 at 256 px, 2x2 at 512 px), convolutional ResBlock stages that halve the resolution at their
output, a transformer stack at the lowest resolution (16x16) in which every self-attention block
is followed by a cross-attention block over the frozen image encoder's tokens, then mirrored up
stages that consume the down stages' skips. Noise level enters as a sinusoidal embedding of
log-SNR that modulates every block through FiLM (scale and shift after normalisation).

Diffusion (sec. 6.1): v-prediction, cosine log-SNR schedule shifted by 2*log(noise_res/image_size)
with noise resolution 32, DDPM ancestral sampling whose standard deviation is
sigma_{t->s}^0.2 * sigma_{ts}^0.8, and guidance eps = (1 + w) eps(c) - w eps(none).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "semantica-uvit"
CONFIG_VERSION = 1


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderConfig:
    """The frozen image encoder: a timm DINOv2 ViT and the input size it is run at."""

    timm_name: str = "vit_large_patch14_dinov2.lvd142m"
    image_size: int = 224
    tokens: str = "all"  # "all": CLS + patch tokens; "patch": patch tokens only
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. tiny test dims

    @property
    def arch(self) -> str:
        """timm architecture name without the pretrained tag."""
        return self.timm_name.split(".", 1)[0]


@dataclass(frozen=True)
class SemanticaConfig:
    """Sizes of the U-ViT, the schedule and the sampler; defaults are the paper's 512-px model."""

    image_size: int = 512
    patch_size: int = 2
    channels: tuple[int, ...] = (128, 256, 1024, 2048)
    blocks: tuple[int, ...] = (2, 3, 3, 3)
    attention: tuple[bool, ...] = (False, False, False, True)  # self-attention in a conv stage
    transformer_width: int = 4096
    transformer_depth: int = 12
    head_dim: int = 128
    mlp_ratio: int = 4
    emb_dim: int = 1024
    norm_groups: int = 32
    noise_resolution: int = 32
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    sampler_interpolation: float = 0.2
    clip_x0: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        if isinstance(self.encoder, dict):
            object.__setattr__(self, "encoder", EncoderConfig(**self.encoder))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on inconsistent sizes (checked when a checkpoint is loaded)."""
        n = len(self.channels)
        if n == 0 or len(self.blocks) != n or len(self.attention) != n:
            raise ValueError("channels, blocks and attention need one entry per stage")
        if self.image_size % (self.patch_size * 2**n):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size * 2^stages "
                f"= {self.patch_size * 2**n}"
            )
        for c in (*self.channels, self.transformer_width):
            if c % self.norm_groups:
                raise ValueError(
                    f"{c} channels are not divisible by norm_groups {self.norm_groups}"
                )
        for c, a in zip(self.channels, self.attention, strict=True):
            if a and c % self.head_dim:
                raise ValueError(f"attention stage with {c} channels: not a multiple of head_dim")
        if self.transformer_width % self.head_dim:
            raise ValueError("transformer_width must be a multiple of head_dim")
        if not 0.0 <= self.sampler_interpolation <= 1.0:
            raise ValueError("sampler_interpolation must lie in [0, 1]")
        if self.encoder.tokens not in ("all", "patch"):
            raise ValueError("encoder.tokens must be 'all' or 'patch'")
        if self.encoder.image_size % 14:
            raise ValueError("encoder.image_size must be a multiple of the DINOv2 patch size 14")

    @property
    def token_grid(self) -> int:
        """Side length of the transformer's token grid."""
        return self.image_size // (self.patch_size * 2 ** len(self.channels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``config.json`` holds besides architecture/version)."""
        d = asdict(self)
        for k in ("channels", "blocks", "attention"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticaConfig:
        """Build from ``config.json``; unknown keys are errors, never silently ignored."""
        data = dict(data)
        arch = data.pop("architecture", ARCHITECTURE)
        version = data.pop("version", CONFIG_VERSION)
        if arch != ARCHITECTURE:
            raise ValueError(f"architecture {arch!r} is not {ARCHITECTURE!r}")
        if version != CONFIG_VERSION:
            raise ValueError(f"config version {version} is not {CONFIG_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        enc = data.pop("encoder", {})
        enc_known = {f.name for f in fields(EncoderConfig)}
        bad = sorted(set(enc) - enc_known)
        if bad:
            raise ValueError(f"unknown encoder config keys: {', '.join(bad)}")
        return cls(**data, encoder=EncoderConfig(**enc))

    @classmethod
    def paper_256(cls) -> SemanticaConfig:
        """The 256-px ablation model of sec. 6.1 (1x1 input conv, 16-block transformer)."""
        return cls(
            image_size=256,
            patch_size=1,
            channels=(128, 128, 256, 512),
            blocks=(3, 3, 3, 3),
            attention=(False, False, False, True),
            transformer_width=1024,
            transformer_depth=16,
            head_dim=64,
            emb_dim=1024,
        )


# -- schedule, parametrisation, guidance and the DDPM step (pure functions) ---------------------
def logsnr_cosine(
    t: torch.Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0
) -> torch.Tensor:
    """Cosine schedule as log-SNR, clipped to [logsnr_min, logsnr_max] (simple diffusion)."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


def logsnr_shifted(
    t: torch.Tensor,
    image_size: int,
    noise_resolution: int,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> torch.Tensor:
    """Cosine log-SNR shifted by 2*log(noise_resolution / image_size): more noise at high res."""
    shift = 2.0 * math.log(noise_resolution / image_size)
    return logsnr_cosine(t, logsnr_min, logsnr_max) + shift


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance-preserving alpha_t, sigma_t with alpha^2 / sigma^2 = exp(logsnr)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def x0_from_v(z: torch.Tensor, v: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
    """Data prediction from a v-prediction: x = alpha z - sigma v."""
    return alpha * z - sigma * v


def eps_from_v(z: torch.Tensor, v: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
    """Noise prediction from a v-prediction: eps = sigma z + alpha v."""
    return sigma * z + alpha * v


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance (1 + w) * cond - w * uncond; w = 0 is the conditional model.

    Applied to v it equals guidance on eps: eps is affine in v with the same z_t.
    """
    return (1.0 + w) * cond - w * uncond


def ddpm_variances(
    logsnr_t: torch.Tensor, logsnr_s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_ts^2, sigma_{t->s}^2): forward transition s->t and true posterior variances."""
    _, sigma_t = alpha_sigma(logsnr_t)
    _, sigma_s = alpha_sigma(logsnr_s)
    # sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2 = sigma_t^2 (1 - SNR_t / SNR_s), stably:
    var_ts = -torch.expm1(logsnr_t - logsnr_s) * sigma_t**2
    var_post = var_ts * sigma_s**2 / sigma_t**2
    return var_ts, var_post


def ddpm_step(
    z_t: torch.Tensor,
    x0: torch.Tensor,
    logsnr_t: torch.Tensor,
    logsnr_s: torch.Tensor,
    noise: torch.Tensor,
    interpolation: float = 0.2,
) -> torch.Tensor:
    """One ancestral step t -> s < t: posterior mean + sigma_{t->s}^g * sigma_ts^(1-g) * noise."""
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    var_ts, var_post = ddpm_variances(logsnr_t, logsnr_s)
    alpha_ts = alpha_t / alpha_s
    mean = (alpha_ts * sigma_s**2 / sigma_t**2) * z_t + (alpha_s * var_ts / sigma_t**2) * x0
    log_var = interpolation * torch.log(var_post) + (1.0 - interpolation) * torch.log(var_ts)
    return mean + torch.exp(0.5 * log_var) * noise


# -- network ------------------------------------------------------------------------------------
def timestep_embedding(logsnr: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of log-SNR (the network is conditioned on log-SNR, not on t)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = logsnr.float()[:, None] * 100.0 * freqs.to(logsnr.device)[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, FiLM from the noise embedding, 1x1 skip on width change."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention from ``x`` to ``context`` (self-attention when context is x)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).chunk(2, dim=-1)
        k = k.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)
        v = v.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.out(h.transpose(1, 2).reshape(b, n, d))


class SpatialSelfAttention(nn.Module):
    """Self-attention over the pixels of a conv stage's feature map (residual)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = Attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(tokens, tokens).transpose(1, 2).reshape(b, c, h, w)


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention to the image tokens, then an MLP; FiLM on norms."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.self_attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )
        self.film = nn.Linear(emb_dim, 4 * width)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        s1, b1, s2, b2 = self.film(emb)[:, None, :].chunk(4, dim=-1)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.mlp(self.norm3(x) * (1 + s2) + b2)


class UViT(nn.Module):
    """The denoiser: v = f(z_t, logsnr_t, context tokens) for images in [-1, 1]."""

    def __init__(self, config: SemanticaConfig, context_dim: int):
        super().__init__()
        cfg = self.config = config
        p, g, e = cfg.patch_size, cfg.norm_groups, cfg.emb_dim
        self.emb = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.patch_in = nn.Conv2d(3, cfg.channels[0], p, stride=p)
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        widths = (*cfg.channels, cfg.transformer_width)
        for i, (c, n, attn) in enumerate(zip(cfg.channels, cfg.blocks, cfg.attention, strict=True)):
            self.down.append(nn.ModuleList(ResBlock(c, c, e, g) for _ in range(n)))
            self.down_attn.append(
                nn.ModuleList(
                    SpatialSelfAttention(c, c // cfg.head_dim, g) if attn else nn.Identity()
                    for _ in range(n)
                )
            )
            self.downsample.append(nn.Conv2d(c, widths[i + 1], 2, stride=2))
        w = cfg.transformer_width
        self.pos_emb = nn.Parameter(torch.randn(1, cfg.token_grid**2, w) * 0.02)
        self.context_norm = nn.LayerNorm(context_dim)
        self.context_proj = nn.Linear(context_dim, w)
        self.null_context = nn.Parameter(torch.randn(w) * 0.02)  # the unconditional "image"
        self.transformer = nn.ModuleList(
            TransformerBlock(w, w // cfg.head_dim, cfg.mlp_ratio, e)
            for _ in range(cfg.transformer_depth)
        )
        self.transformer_norm = nn.LayerNorm(w)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i, (c, n, attn) in enumerate(zip(cfg.channels, cfg.blocks, cfg.attention, strict=True)):
            self.upsample.append(nn.Conv2d(widths[i + 1], c, 3, padding=1))
            self.up.append(nn.ModuleList(ResBlock(2 * c, c, e, g) for _ in range(n)))
            self.up_attn.append(
                nn.ModuleList(
                    SpatialSelfAttention(c, c // cfg.head_dim, g) if attn else nn.Identity()
                    for _ in range(n)
                )
            )
        self.out_norm = nn.GroupNorm(g, cfg.channels[0])
        self.patch_out = nn.Conv2d(cfg.channels[0], 3 * p * p, 1)

    def embed_context(self, tokens: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
        """Project encoder tokens to the transformer width; None gives the learned null context.

        The null context repeats one learned token, so cross-attention returns that token's value
        whatever the length: conditional and unconditional rows batch together.
        """
        if tokens is None:
            return self.null_context.to(self.pos_emb.dtype).expand(batch, length, -1)
        return self.context_proj(self.context_norm(tokens))

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        emb = self.emb(timestep_embedding(logsnr, cfg.emb_dim).to(z.dtype))
        h = self.patch_in(z)
        skips = []
        for blocks, attns, down in zip(self.down, self.down_attn, self.downsample, strict=True):
            for block, attn in zip(blocks, attns, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            h = down(h)
        b, c, gh, gw = h.shape
        x = h.flatten(2).transpose(1, 2) + self.pos_emb
        for block in self.transformer:
            x = block(x, emb, context)
        h = self.transformer_norm(x).transpose(1, 2).reshape(b, c, gh, gw)
        for i in reversed(range(len(cfg.channels))):
            h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            for block, attn in zip(self.up[i], self.up_attn[i], strict=True):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
        h = self.patch_out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, cfg.patch_size)


# -- frozen image encoder -----------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_encoder(enc: EncoderConfig) -> nn.Module:
    """The timm DINOv2 ViT (random weights; load a state dict next) at ``enc.image_size``."""
    import timm

    return timm.create_model(
        enc.arch, pretrained=False, img_size=enc.image_size, num_classes=0, **enc.model_kwargs
    )


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a timm/DINOv2 state dict, resampling position embeddings to the model's input size."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    encoder.load_state_dict(checkpoint_filter_fn(state, encoder), strict=True)


def preprocess_condition(image: Any, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xSxS: bicubic resize of the short side to S, centre crop, ImageNet norm."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


@torch.no_grad()
def encode_condition(encoder: nn.Module, enc: EncoderConfig, pixels: torch.Tensor) -> torch.Tensor:
    """Frozen DINOv2 tokens (after the final norm): CLS (+registers) and patches, or patches only."""
    tokens = encoder.forward_features(pixels)
    if enc.tokens == "patch":
        tokens = tokens[:, getattr(encoder, "num_prefix_tokens", 1) :]
    return tokens


# -- sampling -----------------------------------------------------------------------------------
def _noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal draw per sample from its own generator (batch-size invariant)."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    )


@torch.no_grad()
def sample(
    model: UViT,
    tokens: torch.Tensor,
    guidance: float,
    steps: int,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """DDPM ancestral sampling from t = 1 to 0 in ``steps`` uniform steps; returns x in [-1, 1].

    ``tokens``: B x T x D encoder tokens, one row per generator. Each step evaluates the
    conditional and null-conditioned model in one batch (the conditional only when w = 0).
    The last step returns the model's clean-image prediction without adding noise.
    """
    cfg = model.config
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    b = len(generators)
    shape = (3, cfg.image_size, cfg.image_size)
    z = _noise(generators, shape).to(device)
    ctx_c = model.embed_context(tokens.to(device=device, dtype=dtype), b, tokens.shape[1])
    guided = guidance != 0.0
    if guided:
        ctx = torch.cat([ctx_c, model.embed_context(None, b, tokens.shape[1])])
    else:
        ctx = ctx_c
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    logsnrs = logsnr_shifted(
        ts, cfg.image_size, cfg.noise_resolution, cfg.logsnr_min, cfg.logsnr_max
    )
    x0 = z
    for i in range(steps):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        alpha_t, sigma_t = (float(a) for a in alpha_sigma(lt))
        z_in = torch.cat([z, z]) if guided else z
        lt_in = torch.full((z_in.shape[0],), float(lt), device=device)
        v = model(z_in.to(dtype), lt_in, ctx).float()
        v = guide(*v.chunk(2), guidance) if guided else v
        x0 = x0_from_v(z, v, alpha_t, sigma_t)
        if cfg.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if i == steps - 1:
            break
        noise = _noise(generators, shape).to(device)
        z = ddpm_step(
            z.double(), x0.double(), lt, ls, noise.double(), cfg.sampler_interpolation
        ).float()
    return x0
