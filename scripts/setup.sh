#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian bookworm machine:
# the kernel's rustup target, QEMU 10 from bookworm-backports, Xen, and chromium.
# Idempotent: each step is skipped when its result is already present.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo "$@"; else log "need root for: $*"; exit 1; fi
  else
    "$@"
  fi
}

# 1. The kernel target (RUSTUP_AUTO_INSTALL=0 means cargo will not add it for us).
if ! rustup target list --installed 2>/dev/null | grep -qx 'x86_64-unknown-none'; then
  log "adding rustup target x86_64-unknown-none"
  rustup target add x86_64-unknown-none
fi

# 2. QEMU >= 10 (bookworm ships 7.2; we verified 10.0 from bookworm-backports).
qemu_major() {
  qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}
if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
  if [ -n "${PARAVIRT_NO_APT:-}" ]; then
    log "QEMU >= 10 missing and PARAVIRT_NO_APT is set: skipping the install"
  else
    src=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "adding the bookworm-backports suite"
      need_root tee "$src" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    log "installing qemu-system-x86 from bookworm-backports (this takes a minute)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-x86 >/dev/null
  fi
fi
# 3. Xen for the xen-pvh platform: Debian's hypervisor package, unpacked under
# .cache/xen (no system install). Without it that platform is skipped, not failed.
if ! bash "$(dirname "$0")/fetch-xen.sh" >/dev/null; then
  log "Xen could not be fetched: the xen-pvh platform will be skipped"
fi
# 4. Chromium for `pvlab report`'s browser test (headless screenshot and DOM dump).
# Optional: without it that test prints SKIP; the setup goes on either way.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1; then
  :
elif [ -n "${PARAVIRT_NO_APT:-}" ]; then
  log "chromium missing and PARAVIRT_NO_APT is set: the report's browser test will be skipped"
else
  log "installing chromium (the report's browser test; a minute or two)"
  # A subshell: need_root's own exit (no root, no sudo) must not end the setup.
  if ! (need_root apt-get update -qq \
    && need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium >/dev/null); then
    log "chromium could not be installed (apt-get failed): the report's browser test will be skipped"
  fi
fi
log "ready: $(qemu-system-x86_64 --version 2>/dev/null | head -n1 || echo 'no QEMU')"
