"""Fig. 3 of the Semantica paper: recall on a one-shot protocol against its full-set counterpart.

The pairing lives in the protocol files (``full_set = "imagenet_10shot"`` in imagenet_1shot),
not here. Rows pair by model and protocol overrides (all but ``k``, which the two sides differ
in by construction); a model measured on only one side is named, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from varbench.errors import VarbenchError
from varbench.plan.protocol import load_protocol, protocol_files


def split_label(label: str) -> tuple[str, dict[str, str]]:
    """``demo_1shot[k=2,n_per_class=4]`` -> ("demo_1shot", {"k": "2", "n_per_class": "4"})."""
    base, _, rest = str(label).partition("[")
    items = [p for p in rest.rstrip("]").split(",") if p] if rest else []
    return base, dict(p.split("=", 1) for p in items if "=" in p)


def full_set_of(protocol: str) -> str | None:
    """The full-set counterpart a protocol names (``full_set`` key), if any."""
    try:
        return load_protocol(protocol).full_set
    except VarbenchError:
        return None


@dataclass
class ContrastPanel:
    """One model's rows on a one-shot protocol and on its full-set counterpart."""

    model: str
    one_shot: str  # protocol label
    full_set: str
    one_rows: list[dict] = field(default_factory=list)
    full_rows: list[dict] = field(default_factory=list)


def contrast_panels(
    measured: pd.DataFrame, protocols: list[str] | None = None
) -> tuple[list[ContrastPanel], list[str]]:
    """Panels with both sides measured, and one line per run pair missing a side."""
    if measured is None or measured.empty or "protocol" not in measured:
        return [], []
    rows = measured.to_dict("records")
    labels = sorted({str(r["protocol"]) for r in rows})
    full_by_one: dict[str, str] = {}
    for label in labels:
        base, over = split_label(label)
        full = full_set_of(base)
        if full and full != base and (not protocols or label in protocols or base in protocols):
            full_by_one[label] = full
    panels: dict[tuple[str, str], ContrastPanel] = {}
    missing: list[str] = []
    for label, full in sorted(full_by_one.items()):
        _, over = split_label(label)
        key_over = {k: v for k, v in over.items() if k != "k"}
        full_labels = [
            lab
            for lab in labels
            if split_label(lab)[0] == full
            and {k: v for k, v in split_label(lab)[1].items() if k != "k"} == key_over
        ]
        one_models = sorted({str(r["model"]) for r in rows if r["protocol"] == label})
        full_models = sorted({str(r["model"]) for r in rows if r["protocol"] in full_labels})
        for model in one_models:
            if model not in full_models:
                missing.append(
                    f"{model}: runs on {label} but none on its full-set counterpart {full} "
                    f"(run `varbench run --model {model} --protocol {full}` with the same --set)"
                )
                continue
            panel = panels.setdefault((model, label), ContrastPanel(model, label, full_labels[0]))
            panel.one_rows = [r for r in rows if r["protocol"] == label and r["model"] == model]
            panel.full_rows = [
                r for r in rows if r["protocol"] in full_labels and r["model"] == model
            ]
        for model in full_models:
            if model not in one_models:
                missing.append(f"{model}: runs on {full} but none on the one-shot protocol {label}")
    # full-set runs whose one-shot side has no run at all
    shipped = {name: full_set_of(name) for name in protocol_files()}
    for label in labels:
        ones = [n for n, f in shipped.items() if f == split_label(label)[0]]
        if ones and not any(split_label(lab)[0] in ones for lab in labels):
            missing.append(f"{label}: full-set runs, but none on {', '.join(ones)}")
    return list(panels.values()), missing


__all__ = ["ContrastPanel", "contrast_panels", "full_set_of", "split_label"]
