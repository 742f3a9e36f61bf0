#!/usr/bin/env bash
# Installs the system packages the test suite needs: Debian's Chromium (browser tests) and
# PostgreSQL (multi-instance and ledger tests). Does nothing when they are already there.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
printf '\n==> [%s] installing system packages: %s\n' "$(date +%H:%M:%S)" "${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
