#!/usr/bin/env bash
# Fetches Debian bookworm's Xen hypervisor and leaves the gunzipped ELF32
# multiboot image at .cache/xen/xen, which QEMU loads with -kernel (QEMU's
# multiboot loader takes neither xen.gz nor xen.efi).
# Prints that path on stdout; progress goes to stderr; a failure is one line,
# "fetch-xen: <reason>", and a non-zero exit.
# Idempotent: nothing is downloaded or unpacked when .cache/xen/xen is already
# a 32-bit ELF with a multiboot header.
#
#   XEN_PKG=...        Debian package (default xen-hypervisor-4.17-amd64)
#   XEN_FETCH_FORCE=1  drop the cached .deb and image, download and unpack again
set -euo pipefail

log() { printf 'fetch-xen: %s\n' "$*" >&2; }
die() { printf 'fetch-xen: %s\n' "$*" >&2; exit 1; }

for tool in apt-get dpkg gzip od; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

here="${BASH_SOURCE[0]%/*}"
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
root="$(cd "$here/.." && pwd)" || die "cannot find the repository root"
pkg="${XEN_PKG:-xen-hypervisor-4.17-amd64}"
cache="$root/.cache/xen"
out="$cache/xen"

# The image QEMU needs: "ELF 32-bit ..." with a multiboot (v1) header, magic
# 0x1BADB002 on a 4-byte boundary in the first 8 KiB.
# (Outputs are captured first: with pipefail, "od | grep -q" can fail on SIGPIPE.)
is_multiboot_elf32() {
  local ident words
  # e_ident: 7f 'E' 'L' 'F', then EI_CLASS 01 (32-bit).
  ident="$(od -An -tx1 -N5 "$1" 2>/dev/null | tr -d ' \n')" || return 1
  [ "$ident" = "7f454c4601" ] || return 1
  words="$(od -An -tx4 -N8192 -w4 -v "$1" 2>/dev/null)" || return 1
  grep -q '^ *1badb002$' <<<"$words"
}

if [ -n "${XEN_FETCH_FORCE:-}" ]; then
  log "XEN_FETCH_FORCE set: dropping the cached package and image"
  rm -rf "$cache/debs" "$cache/root" "$out"
elif [ -s "$out" ] && is_multiboot_elf32 "$out"; then
  log "already present: $out"
  printf '%s\n' "$out"
  exit 0
fi

mkdir -p "$cache/debs" || die "cannot create $cache/debs"

# apt-get download into $cache/debs; on failure the reason is apt's last "E:" line.
download() {
  local o
  # apt's _apt sandbox user must be able to write here, or apt warns.
  chmod 0777 "$cache/debs" 2>/dev/null || true
  if o="$(cd "$cache/debs" && apt-get download -q "$pkg" 2>&1)"; then
    printf '%s\n' "$o" | sed 's/^/fetch-xen: apt: /' >&2
    return 0
  fi
  dl_err="$(printf '%s\n' "$o" | grep '^E:' | tail -n1 | sed 's/^E: *//')"
  [ -n "$dl_err" ] || dl_err="$(printf '%s\n' "$o" | tail -n1)"
  return 1
}

# 1. Download the .deb (once); run apt-get update only if the first try fails.
newest_deb() { ls -1t "$cache/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true; }
deb="$(newest_deb)"
if [ -z "$deb" ]; then
  log "downloading $pkg"
  dl_err=""
  if ! download; then
    log "download failed ($dl_err); running apt-get update and retrying"
    apt-get update -q >/dev/null 2>&1 || die "apt-get update failed"
    download || die "apt-get download $pkg failed: $dl_err"
  fi
  deb="$(newest_deb)"
  [ -n "$deb" ] || die "apt-get download left no ${pkg}_*.deb in $cache/debs"
else
  log "using cached $(basename "$deb")"
fi

# 2. Unpack it into a fresh tree.
rm -rf "$cache/root"
log "unpacking $(basename "$deb")"
dpkg -x "$deb" "$cache/root" 2>/dev/null || die "dpkg -x $(basename "$deb") failed"

# 3. The hypervisor is boot/xen-<ver>-amd64.gz (next to .efi and .config).
gz="$(find "$cache/root/boot" -maxdepth 1 -type f -name 'xen*.gz' 2>/dev/null | sort | head -n1 || true)"
[ -n "$gz" ] || die "no boot/xen*.gz in $(basename "$deb")"
log "gunzipping ${gz#"$cache/root/"}"
gzip -dc "$gz" >"$out.tmp" 2>/dev/null || { rm -f "$out.tmp"; die "gunzip ${gz#"$cache/root/"} failed"; }
if ! is_multiboot_elf32 "$out.tmp"; then
  rm -f "$out.tmp"
  die "${gz#"$cache/root/"} is not a multiboot ELF 32-bit image"
fi
mv "$out.tmp" "$out"

log "$(basename "$deb" .deb): multiboot ELF32 ready"
printf '%s\n' "$out"
