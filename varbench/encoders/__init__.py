"""Feature encoders, one module each, registered by name with lazy targets.

Each encoder owns its preprocessing (resize mode, normalisation) and its cache key.
May import: ``core`` and ``errors``.
"""

from __future__ import annotations

from varbench.core.registry import Registry
from varbench.encoders.base import Encoder

encoder_registry: Registry[type[Encoder]] = Registry(kind="encoder", base=Encoder)
encoder_registry.register("demo", "varbench.encoders.demo:DemoEncoder")
encoder_registry.register("inception", "varbench.encoders.inception:InceptionEncoder")
encoder_registry.register("dinov2", "varbench.encoders.dinov2:DinoV2Encoder")
encoder_registry.register("dinov2_l", "varbench.encoders.dinov2:DinoV2LargeEncoder")
encoder_registry.register("clip", "varbench.encoders.clip:ClipEncoder")
encoder_registry.register("clip_l", "varbench.encoders.clip:ClipLargeEncoder")
encoder_registry.register("clip_l336", "varbench.encoders.clip336:ClipL336Encoder")
encoder_registry.register("lpips", "varbench.encoders.lpips:LpipsEncoder")
encoder_registry.register("lpips_vgg", "varbench.encoders.lpips:LpipsVggEncoder")

__all__ = ["Encoder", "encoder_registry"]
