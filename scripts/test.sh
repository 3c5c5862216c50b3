#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing
# (scripts/setup.sh), then `cargo test` (host unit tests, pvrun's error cases,
# and the real kernel booted on every platform present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test "$@"
