#!/usr/bin/env bash
# Runs the boot matrix on a fresh machine: installs what is missing
# (scripts/setup.sh), then `cargo run --release` (pvlab). Arguments go to pvlab,
# e.g. `scripts/matrix.sh bench` or `scripts/matrix.sh -p pvrun-kvm -v`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release -- "$@"
