#!/usr/bin/env bash
# Installs the programs the tests run besides CRIU (Debian packages), when
# they are missing: strace (a traced process is refused), python3 (it makes
# an io_uring), util-linux's unshare/setpriv, iproute2's ss.
set -euo pipefail
need=()
for tool in strace:strace python3:python3 unshare:util-linux setpriv:util-linux ss:iproute2; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "install-test-tools: run as root to install ${need[*]}" >&2; exit 1; }
echo "install-test-tools: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
