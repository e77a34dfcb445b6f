#!/usr/bin/env bash
# Regenerate results/baselines/demo_1shot.parquet (the gate .ci/run applies to the embedded demo)
# from the current code: run the demo's copy and oracle baselines, freeze their rows.
# Re-run and commit the result whenever a change is meant to move the demo's numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="$(mktemp -d)"
trap 'rm -rf "$runs"' EXIT
for model in copy oracle; do
  varbench run --model "$model" --protocol demo_1shot --out "$runs" >/dev/null
done
varbench baseline --runs "$runs" --protocol demo_1shot --out results/baselines/demo_1shot.parquet
