"""`varbench fetch`: download what encoders, a protocol's metrics or a model need into the caches."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from varbench.encoders import encoder_registry
from varbench.errors import UsageError
from varbench.metrics import metric_registry

log = logging.getLogger(__name__)


def fetch(
    encoders: Sequence[str] = (), protocol: str | None = None, model: str | None = None
) -> list[dict[str, str]]:
    """Download what the named encoders / protocol / model need into the usual caches."""
    names = list(encoders)
    if protocol:
        from varbench.plan.protocol import load_protocol

        spec = load_protocol(protocol)
        names += [spec.encoder]
        for m in spec.metrics:
            names += list(metric_registry.get(m).encoders)
    if not names and not model:
        raise UsageError("nothing to fetch: pass --protocol P, --encoders a,b or --model M")
    done: list[dict[str, str]] = []
    for name in dict.fromkeys(names):
        enc = encoder_registry.get(name)()
        if not hasattr(enc, "fetch"):
            done.append({"encoder": name, "status": "no weights needed"})
            continue
        local = enc.weights_path() if hasattr(enc, "weights_path") else None
        if local is not None:
            done.append({"encoder": name, "status": "present", "path": str(local)})
            continue
        log.info("fetching weights of encoder %s", name)
        done.append({"encoder": name, "status": "fetched", "path": str(enc.fetch())})
    if model:
        from varbench.adapter import get_adapter_class

        cls = get_adapter_class(model)
        adapter = cls(cls.resolve_options({}), device="cpu", dtype="float32")
        for item in adapter.fetch():
            done.append({"model": model, "status": "fetched", "path": str(item)})
    return done
