"""Make the fixed class subset of a smoke protocol: every Nth class (sorted), files symlinked.

    python .github/smoke_subset.py --layout imagefolder --every 10 /data/imagenet/val smoke/imagenet
    python .github/smoke_subset.py --layout sun397 --every 4 /data/sun397 smoke/sun397

The manifest of the smoke run hashes every file, so a different subset or changed files fail the
run's manifest check against the baseline's manifest_sha256 instead of passing silently.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from varbench.plan.datasets import list_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", choices=["imagefolder", "sun397"], required=True)
    ap.add_argument("--every", type=int, required=True, help="keep class 0, N, 2N, ... (sorted)")
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    args = ap.parse_args()
    listing = list_dataset(args.src, args.layout)
    keep = listing.class_names[:: args.every]
    for name in keep:
        for rel in listing.classes[name]:
            target = args.dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(listing.path(rel), target)
    sys.stdout.write(json.dumps({"classes": len(keep), "dest": str(args.dest)}) + "\n")


if __name__ == "__main__":
    main()
