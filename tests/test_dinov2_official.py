"""DINOv2 features as the official code (and so dgm-eval / EDM2) computes them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from varbench.encoders.dinov2 import dgm_eval_batch, official_forward
from varbench.plan.demo_data import demo_image


class OfficialReference:
    """Transcribed from facebookresearch/dinov2 dinov2/models/vision_transformer.py
    (``DinoVisionTransformer.interpolate_pos_encoding``, ``prepare_tokens_with_masks``,
    ``forward_features``['x_norm_clstoken']), with interpolate_offset=0.1 and
    interpolate_antialias=False, the defaults of the released hub models."""

    def __init__(self, vit):
        self.vit = vit
        self.pos_embed = vit.pos_embed
        self.patch_size = vit.patch_embed.patch_size[0]
        self.interpolate_offset = 0.1
        self.interpolate_antialias = False

    def interpolate_pos_encoding(self, x, w, h):
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        N = self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size
        h0 = h // self.patch_size
        M = int(math.sqrt(N))
        assert N == M * M
        kwargs = {}
        if self.interpolate_offset:
            sx = float(w0 + self.interpolate_offset) / M
            sy = float(h0 + self.interpolate_offset) / M
            kwargs["scale_factor"] = (sx, sy)
        else:
            kwargs["size"] = (w0, h0)
        patch_pos_embed = nn.functional.interpolate(
            patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.interpolate_antialias,
            **kwargs,
        )
        assert (w0, h0) == patch_pos_embed.shape[-2:]
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def __call__(self, x):
        B, nc, w, h = x.shape
        x = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        for blk in self.vit.blocks:
            x = blk(x)
        return self.vit.norm(x)[:, 0]


@pytest.fixture(scope="module")
def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=518, patch_size=14, embed_dim=48, depth=2, num_heads=3, num_classes=0,
        init_values=1e-5, class_token=True,
    ).eval()  # fmt: skip
    with torch.no_grad():  # a smooth but non-trivial position field, like a trained one
        vit.pos_embed.normal_(0, 1.0)
    return vit


def dgm_eval_transform(image: np.ndarray) -> torch.Tensor:
    """dgm-eval's DINOv2 transform (clean_resize=False), transcribed with torchvision."""
    import torchvision.transforms as TF

    t = TF.Compose(
        [TF.Resize((224, 224), TF.InterpolationMode.BICUBIC), TF.ToTensor(),
         TF.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )  # fmt: skip
    return t(Image.fromarray(image))


def test_preprocessing_equals_dgm_eval():
    ims = [demo_image(0, 1), np.asarray(Image.fromarray(demo_image(3, 2)).resize((90, 60)))]
    ours = dgm_eval_batch(ims, 224)
    ref = torch.stack([dgm_eval_transform(im) for im in ims])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_features_equal_official_run_time_interpolation(tiny_vit):
    from timm.layers import resample_abs_pos_embed

    ims = [demo_image(c, 7 + c) for c in range(3)]
    x = dgm_eval_batch(ims, 224)
    with torch.no_grad():
        ours = official_forward(tiny_vit, x)
        ref = OfficialReference(tiny_vit)(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # timm's load-time resampling (antialiased, to a fixed 16 x 16 grid) is another embedding
    with torch.no_grad():
        official_pe = OfficialReference(tiny_vit).interpolate_pos_encoding(
            torch.zeros(1, 1 + 256, 48), 224, 224
        )
        timm_pe = resample_abs_pos_embed(tiny_vit.pos_embed, (16, 16), num_prefix_tokens=1)
    rel = float((official_pe - timm_pe).norm() / official_pe.norm())
    assert rel > 0.02, rel  # the two paths give materially different position embeddings
