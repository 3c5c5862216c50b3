#!/usr/bin/env bash
# Fetches Debian bookworm's Xen hypervisor and leaves the gunzipped ELF32
# (multiboot) image at .cache/xen/xen, which QEMU can load with -kernel.
# Prints that path on stdout; progress goes to stderr.
# Idempotent: nothing is downloaded or unpacked when .cache/xen/xen is already
# a 32-bit ELF. Set XEN_FETCH_FORCE=1 to redo everything.
#
#   XEN_PKG   Debian package to fetch (default xen-hypervisor-4.17-amd64)
set -euo pipefail

log() { printf 'fetch-xen: %s\n' "$*" >&2; }
die() { printf 'fetch-xen: %s\n' "$*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkg="${XEN_PKG:-xen-hypervisor-4.17-amd64}"
cache="$root/.cache/xen"
out="$cache/xen"

is_elf32() { file -b "$1" 2>/dev/null | grep -q '^ELF 32-bit'; }

for tool in apt-get dpkg-deb gzip file; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

if [ -z "${XEN_FETCH_FORCE:-}" ] && [ -s "$out" ] && is_elf32 "$out"; then
  log "already present: $out"
  printf '%s\n' "$out"
  exit 0
fi

mkdir -p "$cache/debs" || die "cannot create $cache/debs"

# 1. Download the .deb (once). apt-get download writes to the current directory.
deb="$(ls -1t "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)"
if [ -z "$deb" ]; then
  log "downloading $pkg"
  # apt's _apt sandbox user must be able to write here, or apt warns and runs as root.
  chmod 0777 "$cache/debs" 2>/dev/null || true
  if ! (cd "$cache/debs" && apt-get download -q "$pkg" >&2); then
    log "download failed; running apt-get update and retrying"
    apt-get update -q >&2 || die "apt-get update failed"
    (cd "$cache/debs" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
  fi
  deb="$(ls -1t "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)"
  [ -n "$deb" ] || die "apt-get download left no ${pkg}_*.deb in $cache/debs"
else
  log "using cached $(basename "$deb")"
fi

# 2. Unpack it into a fresh tree.
rm -rf "$cache/root"
log "unpacking $(basename "$deb")"
dpkg-deb -x "$deb" "$cache/root" || die "dpkg -x $deb failed"

# 3. Find the hypervisor: boot/xen-<ver>-amd64.gz (skip .efi, .config, .map).
gz="$(find "$cache/root/boot" -maxdepth 1 -type f -name 'xen*.gz' 2>/dev/null | sort | head -n1 || true)"
[ -n "$gz" ] || die "no boot/xen*.gz in $pkg (contents: $(cd "$cache/root" && find . -type f | tr '\n' ' '))"
log "gunzipping ${gz#"$cache/root/"}"
gzip -dc "$gz" >"$out.tmp" || { rm -f "$out.tmp"; die "gunzip $gz failed"; }
is_elf32 "$out.tmp" || { desc="$(file -b "$out.tmp")"; rm -f "$out.tmp"; die "$gz is not an ELF 32-bit image: $desc"; }
mv "$out.tmp" "$out"

log "$(basename "$deb"): $(file -b "$out")"
printf '%s\n' "$out"
