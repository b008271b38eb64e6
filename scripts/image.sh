#!/usr/bin/env bash
# Build the dnsteer container image locally with podman, pulling nothing from any registry:
# deploy/Containerfile is `FROM scratch` plus a context this script stages from the host —
# the release binary (debug info stripped), the shared libraries `ldd` lists for it (glibc,
# libm, libgcc_s, the dynamic loader) and /etc/passwd + /etc/group naming user 65532.
#
#   scripts/image.sh                   # build, tag localhost/dnsteer:<short sha> and :dev
#   DNSTEER_BIN=path scripts/image.sh  # use this binary instead of `cargo build --release`
#
# Tags: localhost/dnsteer:<git short sha> (":<sha>-dirty" when src/, Cargo.toml or Cargo.lock
# have uncommitted changes, so a tag never claims a commit it was not built from) and
# localhost/dnsteer:dev. The image's created time is the commit time (same inputs, same image ID).
# Idempotent: installs podman from Debian only when missing; rebuilding replaces the tags.
# Prints the image reference on stdout (last line); logs go to stderr.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

IMAGE_REPO="${IMAGE_REPO:-localhost/dnsteer}"
UID_GID=65532

# ---- tools ----------------------------------------------------------------------------------
if ! command -v podman >/dev/null 2>&1; then
  log "installing podman (Debian packages)"
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman crun uidmap
fi

# ---- binary ---------------------------------------------------------------------------------
if [[ -n ${DNSTEER_BIN:-} ]]; then
  BIN="$DNSTEER_BIN"
else
  log "building dnsteer (cargo build --release)"
  cargo build --release --locked --bin dnsteer
  BIN="$TARGET_DIR/release/dnsteer"
fi
[[ -x $BIN ]] || die "no dnsteer binary at $BIN"

sha=$(git rev-parse --short HEAD)
if [[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]]; then
  sha="$sha-dirty"
  log "warning: uncommitted changes in src/ or Cargo.*: tagging $sha"
fi
version=$("$BIN" --version | awk '{ print $NF }')

# ---- build context --------------------------------------------------------------------------
CTX="$TARGET_DIR/image-context"
rm -rf "$CTX"
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/etc" "$CTX/rootfs/etc/dnsteer"
strip --strip-debug -o "$CTX/rootfs/usr/local/bin/dnsteer" "$BIN"
chmod 0755 "$CTX/rootfs/usr/local/bin/dnsteer"

# Each library at the path ldd resolved it to (the loader at its PT_INTERP path), symlinks
# followed, so the loader's built-in multiarch search finds them without an ld.so.cache.
libs=$(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[[ -n $libs ]] || die "ldd found no libraries for $BIN (a static binary needs no Containerfile change, but check it)"
while read -r lib; do
  mkdir -p "$CTX/rootfs$(dirname "$lib")"
  cp -L "$lib" "$CTX/rootfs$lib"
  log "library $lib"
done <<<"$libs"

printf 'root:x:0:0:root:/root:/sbin/nologin\ndnsteer:x:%s:%s:dnsteer:/nonexistent:/sbin/nologin\n' \
  "$UID_GID" "$UID_GID" >"$CTX/rootfs/etc/passwd"
printf 'root:x:0:\ndnsteer:x:%s:\n' "$UID_GID" >"$CTX/rootfs/etc/group"
# Hostnames (a PowerDNS API URL, an ifurlup host) resolve through glibc's built-in files+dns.
printf 'hosts: files dns\n' >"$CTX/rootfs/etc/nsswitch.conf"
cp deploy/Containerfile "$CTX/Containerfile"

# ---- build ----------------------------------------------------------------------------------
log "podman build $IMAGE_REPO:$sha (dnsteer $version)"
podman build --quiet --pull=never --network=none \
  --timestamp "$(git log -1 --format=%ct)" \
  --label "org.opencontainers.image.title=dnsteer" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
  -t "$IMAGE_REPO:$sha" -t "$IMAGE_REPO:dev" \
  -f "$CTX/Containerfile" "$CTX" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE_REPO:$sha")
log "built $IMAGE_REPO:$sha and $IMAGE_REPO:dev ($((size / 1024 / 1024)) MiB)"
echo "$IMAGE_REPO:$sha"
