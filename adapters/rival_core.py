"""RIVAL's sampling core on current diffusers: DDIM inversion chain, cross-image attention, AdaIN.

RIVAL (Zhang et al., "Real-World Image Variation by Aligning Diffusion Inversion Chain", NeurIPS
2023) inverts the conditioning image with DDIM into a chain x_0 .. x_T, starts the variation from
x_T with its spatial positions permuted, and denoises it next to a reference branch that is reset
to the chain after every step. In the UNet's self-attention (``attn1``) layers the variation uses
the reference's keys and values only while the grid timestep is above ``t_align``, then the
reference's and its own concatenated; while the timestep is above ``t_early`` its guided noise
prediction is renormalised (AdaIN, per channel) to the reference's noise statistics.

Written from the paper and its appendix against diffusers' ``Attention`` processor interface:
the authors' code monkey-patches ``CrossAttention.forward``, which diffusers no longer has.
Unlike theirs, the reference runs in its own UNet pass whose self-attention keys and values are
recorded and then read by the variations' pass, so a variation never shares a batch with anything
that could change its numbers, and injection does not depend on classifier-free guidance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ATTN_MODES = ("off", "record", "reference", "concat")


@dataclass
class InjectionState:
    """What every RIVAL self-attention processor of one UNet does on the next forward pass."""

    mode: str = "off"
    # For "reference"/"concat": row of the recorded bank whose keys and values each row reads.
    bank_row: torch.Tensor | None = None
    bank: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # attn1 calls per mode (tests, logs)

    def set(self, mode: str, bank_row: torch.Tensor | None = None) -> None:
        """Switch mode; ``record`` starts a fresh bank."""
        if mode not in ATTN_MODES:
            raise ValueError(f"attention mode {mode!r} not in {ATTN_MODES}")
        self.mode = mode
        self.bank_row = bank_row
        if mode == "record":
            self.bank.clear()


class RivalSelfAttnProcessor:
    """SDPA self-attention that records the reference's K/V or attends to them (RIVAL sec. 3.2)."""

    def __init__(self, name: str, state: InjectionState):
        self.name = name
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        st = self.state
        mode = st.mode if encoder_hidden_states is None else "off"  # only ever self-attention
        st.calls[mode] = st.calls.get(mode, 0) + 1
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            if mode in ("reference", "concat"):
                raise NotImplementedError("RIVAL injection with an attention mask")
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if mode == "record":
            st.bank[self.name] = (key, value)
        elif mode in ("reference", "concat"):
            ref_key, ref_value = st.bank[self.name]
            rows = st.bank_row
            if rows is None or rows.shape[0] != batch:
                raise RuntimeError(f"{self.name}: bank_row does not match batch size {batch}")
            ref_key, ref_value = ref_key[rows], ref_value[rows]
            if mode == "reference":  # early steps: the reference's keys and values only
                key, value = ref_key, ref_value
            else:  # later steps: the reference's and the variation's own, concatenated
                key = torch.cat([ref_key, key], dim=1)
                value = torch.cat([ref_value, value], dim=1)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            scale=attn.scale,
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:  # appendix eq. 14: the residual comes after attention
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_processors(unet: Any) -> InjectionState:
    """Give every ``attn1`` of ``unet`` a RIVAL processor (cross-attention keeps plain SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = InjectionState()
    procs: dict[str, Any] = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = RivalSelfAttnProcessor(name, state)
        else:
            procs[name] = AttnProcessor2_0()
    if not any(isinstance(p, RivalSelfAttnProcessor) for p in procs.values()):
        raise RuntimeError("the UNet has no self-attention (attn1) layers for RIVAL to inject into")
    unet.set_attn_processor(procs)
    return state


def adain(feat: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel AdaIN of ``feat`` (N,C,H,W) to ``ref``'s statistics (unbiased var)."""
    f, r = feat.float(), ref.float()
    f_mean, r_mean = f.mean(dim=(2, 3), keepdim=True), r.mean(dim=(2, 3), keepdim=True)
    f_std = (f.flatten(2).var(dim=2, unbiased=True) + eps).sqrt()[..., None, None]
    r_std = (r.flatten(2).var(dim=2, unbiased=True) + eps).sqrt()[..., None, None]
    return ((f - f_mean) / f_std * r_std + r_mean).to(feat.dtype)


def permute_positions(latent: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shuffle the spatial positions of a (1,C,H,W) latent, the same way in every channel."""
    _, c, h, w = latent.shape
    idx = torch.randperm(h * w, generator=generator, device=generator.device).to(latent.device)
    return latent.reshape(1, c, h * w)[:, :, idx].reshape(1, c, h, w)


@dataclass(frozen=True)
class DDIMSchedule:
    """DDIM (eta 0) timesteps and cumulative alphas for a given number of steps."""

    timesteps: tuple[int, ...]  # descending, as sampled
    alphas_cumprod: torch.Tensor
    final_alpha: float
    ratio: int
    offset: int

    @classmethod
    def from_scheduler(cls, scheduler: Any, steps: int) -> DDIMSchedule:
        """Timesteps from a diffusers DDIMScheduler (leading spacing, as RIVAL's SD 1.5 setup)."""
        scheduler.set_timesteps(steps)
        cfg = scheduler.config
        if cfg.prediction_type != "epsilon":
            raise ValueError(f"RIVAL needs an epsilon-prediction model, got {cfg.prediction_type}")
        return cls(
            timesteps=tuple(int(t) for t in scheduler.timesteps),
            alphas_cumprod=scheduler.alphas_cumprod.double(),
            final_alpha=float(scheduler.final_alpha_cumprod),
            ratio=cfg.num_train_timesteps // steps,
            offset=int(cfg.steps_offset),
        )

    def alpha(self, t: int) -> float:
        """Cumulative alpha at timestep ``t`` (the final alpha below 0)."""
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha


def ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM update from noise level ``a_from`` to ``a_to`` (either direction)."""
    x0 = (x - (1.0 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1.0 - a_to) ** 0.5 * eps


@dataclass
class Group:
    """One conditioning image: its chain, prompt embeddings and its variations' start latents."""

    chain: Sequence[torch.Tensor]  # [x_0, ..., x_T], each (1,C,h,w) float32
    cond: torch.Tensor  # (1,L,D) prompt: reference and variations
    ref_uncond: torch.Tensor  # (1,L,D) empty prompt: the reference's unconditional branch
    var_uncond: torch.Tensor  # (1,L,D) negative prompt: the variations' unconditional branch
    x_T: torch.Tensor  # (n,C,h,w) float32 start latents of the variations


@dataclass(frozen=True)
class RivalSettings:
    """The knobs of one RIVAL sampling run."""

    guidance: float = 5.0
    t_align: int = 600
    t_early: int = 600
    inject: bool = True
    adain: bool = True


@dataclass
class StepTrace:
    """What happened at one sampling step (for tests and debugging)."""

    index: int
    t: int
    attn_mode: str
    adain: bool
    ref_in: torch.Tensor  # reference latents fed to the UNet at this step (one per group)
    ref_step: torch.Tensor  # where the reference's own DDIM step would have taken it
    ref_next: torch.Tensor  # what the reference is reset to for the next step (chain)
    var_out: torch.Tensor  # variation latents after this step
    eps_ref: torch.Tensor  # the reference's noise prediction (text branch)
    eps_var: torch.Tensor  # the variations' guided noise prediction, after AdaIN if applied


def attn_mode_at(t: int, schedule: DDIMSchedule, settings: RivalSettings) -> str:
    """``reference`` while t - steps_offset > t_align (the authors' step counter), else ``concat``."""
    if not settings.inject:
        return "off"
    return "reference" if t - schedule.offset > settings.t_align else "concat"


def _eps(unet: Any, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
    dtype = next(unet.parameters()).dtype
    out = unet(x.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample
    return out.float()


@torch.no_grad()
def invert(
    unet: Any,
    state: InjectionState,
    latent: torch.Tensor,
    cond: torch.Tensor,
    schedule: DDIMSchedule,
) -> list[torch.Tensor]:
    """DDIM inversion chain [x_0, ..., x_T] of a (1,C,h,w) latent under the prompt ``cond``."""
    state.set("off")
    chain = [latent.float()]
    x = chain[0]
    for t in reversed(schedule.timesteps):
        eps = _eps(unet, x, t, cond)
        x = ddim_move(x, eps, schedule.alpha(t - schedule.ratio), schedule.alpha(t))
        chain.append(x)
    return chain


@torch.no_grad()
def sample(
    unet: Any,
    state: InjectionState,
    groups: Sequence[Group],
    schedule: DDIMSchedule,
    settings: RivalSettings,
    var_chunk: int | None = None,
    trace: Callable[[StepTrace], None] | None = None,
) -> list[torch.Tensor]:
    """Denoise every group's variations next to its reference; return (n,C,h,w) per group.

    The reference pass runs first (all groups' references, recording self-attention K/V); the
    variations then run in chunks of ``var_chunk`` rows (None: all at once) reading that bank.
    Guidance follows the SD convention; g == 1 skips the unconditional branch, injection stays on.
    """
    steps = len(schedule.timesteps)
    n_groups = len(groups)
    cfg = settings.guidance != 1.0
    for g in groups:
        if len(g.chain) != steps + 1:
            raise ValueError(f"chain has {len(g.chain)} latents, expected {steps + 1}")
    x = torch.cat([g.x_T.float() for g in groups])
    owner = torch.cat(
        [torch.full((g.x_T.shape[0],), k, dtype=torch.long) for k, g in enumerate(groups)]
    ).to(x.device)
    cond = torch.cat([g.cond for g in groups])
    if cfg:
        ref_emb = torch.cat([torch.cat([g.ref_uncond for g in groups]), cond])
    else:
        ref_emb = cond
    chunk = var_chunk or x.shape[0]
    try:
        for i, t in enumerate(schedule.timesteps):
            mode = attn_mode_at(t, schedule, settings)
            ref_in = torch.cat([g.chain[steps - i] for g in groups]).float()
            use_adain = settings.adain and t > settings.t_early
            eps_ref = None
            if mode != "off" or use_adain or trace is not None:  # else the reference is unused
                state.set("record" if mode != "off" else "off")
                eps_all = _eps(unet, torch.cat([ref_in, ref_in]) if cfg else ref_in, t, ref_emb)
                eps_ref = eps_all[n_groups:] if cfg else eps_all  # its text branch, as inverted
            parts = []
            for s in range(0, x.shape[0], chunk):
                xs, own = x[s : s + chunk], owner[s : s + chunk]
                if cfg:
                    emb = torch.cat(
                        [torch.cat([groups[int(k)].var_uncond for k in own]), cond[own]]
                    )
                    state.set(mode, torch.cat([own, own + n_groups]))
                    eu, ec = _eps(unet, torch.cat([xs, xs]), t, emb).chunk(2)
                    parts.append(eu + settings.guidance * (ec - eu))
                else:
                    state.set(mode, own)
                    parts.append(_eps(unet, xs, t, cond[own]))
            eps_var = torch.cat(parts)
            if use_adain:
                eps_var = adain(eps_var, eps_ref[owner])
            a_t, a_prev = schedule.alpha(t), schedule.alpha(t - schedule.ratio)
            x = ddim_move(x, eps_var, a_t, a_prev)
            if trace is not None:
                trace(
                    StepTrace(
                        index=i,
                        t=t,
                        attn_mode=mode,
                        adain=use_adain,
                        ref_in=ref_in,
                        ref_step=ddim_move(ref_in, eps_ref, a_t, a_prev),
                        ref_next=torch.cat([g.chain[steps - i - 1] for g in groups]).float(),
                        var_out=x.clone(),
                        eps_ref=eps_ref,
                        eps_var=eps_var,
                    )
                )
    finally:
        state.set("off")
        state.bank.clear()
    return list(x.split([g.x_T.shape[0] for g in groups]))


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an HxWx3 uint8 image to a square and resize it to ``size`` (bicubic)."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    im = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side, :3]))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im)
