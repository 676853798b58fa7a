#!/usr/bin/env bash
# The whole test suite: unit, integration (fake upstream) and end-to-end
# (Debian's docker-registry as upstream; skopeo and containerd as clients).
# Installs the real tools when they are missing; fails, never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# Builds are reused across runs (and CI's fresh clones) when the target dir
# lives outside the checkout; a clean build works the same, only slower.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/klts-mirror/target}"
mkdir -p "$CARGO_TARGET_DIR"
cargo test --locked --all-targets "$@"
