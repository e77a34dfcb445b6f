"""Members of a flat or class-tree container (a folder, a tar, a tar.gz) grouped into classes.

A member's class comes from a label file (flat sets: ImageNet's devkit or Kaggle's CSV) or from
its path, by the protocol's layout: ``<class>/<file>`` for ``imagefolder`` (below one optional
common top folder, e.g. ``val/``), ``[SUN397/]<letter>/<category>[/<sub>]/<file>`` for
``sun397``. Entries are named ``<class>/<file name>``, as in a class-folder tree.
"""

from __future__ import annotations

from collections.abc import Iterable

from varbench.errors import DatasetError
from varbench.plan.layouts.base import entry_rel, is_image_name
from varbench.plan.layouts.labels import Labels


def _stem(member: str) -> str:
    return member.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _path_class(member: str, layout: str, top: str) -> str | None:
    parts = member[len(top) :].split("/")
    if layout == "sun397":
        if parts and parts[0] == "SUN397":
            parts = parts[1:]
        if len(parts) >= 3 and len(parts[0]) == 1:
            return "/".join(parts[:-1])
        return None
    return parts[0] if len(parts) == 2 else None


def _common_top(members: list[str]) -> str:
    """One folder every member sits in (``val/`` of a tarred ``val/<class>/...``), or ''."""
    firsts = {m.split("/", 1)[0] for m in members if "/" in m}
    if len(firsts) == 1 and all("/" in m for m in members):
        top = next(iter(firsts)) + "/"
        if all(m[len(top) :].count("/") >= 1 for m in members):
            return top
    return ""


def group_members(
    members: Iterable[str], layout: str, labels: Labels | None, where: str
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``class -> {entry name: member}`` for image members, and the non-image members ignored."""
    images, ignored = [], []
    for m in members:
        (images if is_image_name(m) else ignored).append(m)
    classes: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    if labels is not None:
        seen = set()
        unlabelled = []
        for m in images:
            stem = _stem(m)
            cls = labels.classes.get(stem)
            if cls is None:
                unlabelled.append(m)
                continue
            seen.add(stem)
            _add(classes, cls, m, layout, problems, where)
        absent = sorted(set(labels.classes) - seen)
        if unlabelled:
            problems.append(
                f"{len(unlabelled)} image(s) have no label in {labels.source} (e.g. "
                f"{unlabelled[0]!r}): the label file has {len(labels.classes)} rows, {where} "
                f"{len(images)} images; fix: pass the label file of this image set"
            )
        if absent:
            problems.append(
                f"{labels.source} names {len(absent)} image(s) absent from {where} (e.g. "
                f"{absent[0]!r}): it labels {len(labels.classes)} images, {where} holds "
                f"{len(images)}; fix: restore the missing images or pass the matching label file"
            )
    else:
        top = _common_top(images) if layout != "sun397" else ""
        loose = []
        for m in images:
            cls = _path_class(m, layout, top)
            if cls is None:
                loose.append(m)
                continue
            _add(classes, cls, m, layout, problems, where)
        if loose:
            want = (
                "SUN397/<letter>/<category>/<image>"
                if layout == "sun397"
                else "<class>/<image> (one folder per class)"
            )
            problems.append(
                f"{len(loose)} image(s) of {where} are not at {want}, e.g. {loose[0]!r}; for a "
                "flat set pass --labels (the ImageNet devkit archive, or a CSV of file,class)"
            )
    if problems:
        raise DatasetError(where, problems)
    return classes, ignored


def _add(
    classes: dict, cls: str, member: str, layout: str, problems: list[str], where: str
) -> None:
    name = entry_rel(cls, member, layout)
    entries = classes.setdefault(cls, {})
    if name in entries:
        problems.append(
            f"{where}: {entries[name]!r} and {member!r} are both entry {name!r} of class {cls!r}; "
            "fix: remove the duplicate"
        )
    entries[name] = member
