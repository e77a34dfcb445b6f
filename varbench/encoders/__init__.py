"""Feature encoders, one module each, registered by name with lazy targets."""

from __future__ import annotations

from varbench.encoders.base import Encoder
from varbench.registry import Registry

encoder_registry: Registry[type[Encoder]] = Registry(kind="encoder", base=Encoder)
encoder_registry.register("demo", "varbench.encoders.demo:DemoEncoder")
encoder_registry.register("inception", "varbench.encoders.inception:InceptionEncoder")

__all__ = ["Encoder", "encoder_registry"]
