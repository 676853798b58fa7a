#!/usr/bin/env bash
# Installs the real tools the end-to-end test (tests/e2e.rs) drives:
# Debian's docker-registry (upstream), skopeo (pull/push client) and
# containerd + ctr (containerd hosts.toml client). Idempotent: apt is only
# touched when a binary is missing, so repeated CI runs stay fast and offline.
set -euo pipefail

required=(docker-registry skopeo ctr containerd)

missing_tools() {
  local tool missing=()
  for tool in "${required[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  echo "${missing[@]:-}"
}

missing="$(missing_tools)"
if [[ -n "$missing" ]]; then
  echo "install-test-deps: missing: $missing; installing via apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y docker-registry skopeo containerd
fi

missing="$(missing_tools)"
if [[ -n "$missing" ]]; then
  echo "install-test-deps: still missing after install: $missing" >&2
  exit 1
fi
echo "install-test-deps: all present: ${required[*]}" >&2
