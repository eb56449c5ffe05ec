#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine with only the
# Rust toolchain. Idempotent: does nothing when everything is present.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The cluster tests and benches start their own Redis (tests/common/redis.rs);
# Debian's package starts no server without systemd.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The two-host cluster test makes network namespaces with `ip netns`.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
