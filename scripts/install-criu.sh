#!/usr/bin/env bash
# Gives a Debian bookworm machine a working CRIU >= 4 at /usr/local/sbin/criu.
#
# Bookworm's own criu (3.17.1) fails `criu check` on recent kernels ("vdso:
# Unexpected rt vDSO area bounds") and there is no backport, so this builds
# Debian's own upstream tarball of a newer release, verified by sha256, from
# the pool of the mirror the machine's apt sources already name.
# Does nothing when a working criu >= 4 is already on PATH.
set -euo pipefail

log() { printf 'install-criu: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PREFIX=${CRIU_PREFIX:-/usr/local}
# version and sha256 of Debian's orig tarballs, newest first
TARBALLS=(
  "4.1.1 f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe"
  "4.2.1 29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"
)
BUILD_DEPS=(build-essential libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev
  libgnutls28-dev uuid-dev pkg-config libaio-dev curl xz-utils ca-certificates)

working_criu() {
  local bin
  bin=$(PATH="$PREFIX/sbin:$PATH" command -v criu) || return 1
  local ver
  ver=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\)\..*/\1/p')
  [ -n "$ver" ] && [ "$ver" -ge 4 ] || { log "$bin is version ${ver:-unknown}, need >= 4"; return 1; }
  "$bin" check >/dev/null 2>&1 || { log "$bin check fails"; return 1; }
  log "working criu: $bin ($("$bin" --version | head -n1))"
}

if working_criu; then exit 0; fi
[ "$(id -u)" = 0 ] || die "must run as root to install criu (sudo $0)"

mirror=$(grep -hEo '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
[ -n "$mirror" ] || mirror=$(grep -hEo '^deb +[^ ]+/debian/? ' /etc/apt/sources.list 2>/dev/null \
           | awk '{print $2}' | head -n1 || true)
[ -n "$mirror" ] || die "no Debian mirror found in the apt sources"
mirror=${mirror%/}

log "installing build dependencies"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || die "apt-get update failed"
apt-get install -y -qq --no-install-recommends "${BUILD_DEPS[@]}" >/dev/null \
  || die "apt-get install of the build dependencies failed"

work=$(mktemp -d /tmp/criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
got=""
for entry in "${TARBALLS[@]}"; do
  read -r version sha <<<"$entry"
  url="$mirror/pool/main/c/criu/criu_${version}.orig.tar.xz"
  log "fetching criu $version orig tarball from the apt mirror"
  if curl -fsSL --retry 3 -o "$work/criu.tar.xz" "$url"; then
    echo "$sha  $work/criu.tar.xz" | sha256sum -c --quiet - || die "sha256 mismatch for $url"
    got=$version; break
  fi
  log "criu $version not in the mirror's pool"
done
[ -n "$got" ] || die "no known criu tarball found in $mirror/pool/main/c/criu/"

tar -xf "$work/criu.tar.xz" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'criu-*' | head -n1)
[ -n "$src" ] || die "tarball did not unpack a criu-* directory"
log "building criu $got (make -j$(nproc) criu)"
make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed"; }
install -D -m 0755 "$src/criu/criu" "$PREFIX/sbin/criu"
hash -r
working_criu || die "installed $PREFIX/sbin/criu but it does not pass criu check"
