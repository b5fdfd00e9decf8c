#!/usr/bin/env bash
# Builds Wick's CPU image from the Dockerfile with podman/buildah (no daemon, no registry), runs
# it with the real model mounted, and checks /health, /ready and one chat completion.
#
# No registry is reachable here, so the Dockerfile's base images are made locally first (once;
# kept between runs):
#   localhost/wick-base/debian:bookworm  debootstrap --variant=minbase, `podman import`ed
#   localhost/wick-base/rust:bookworm    that + gcc + this machine's Rust toolchain (and its CA
#                                        bundle, so cargo reaches crates.io through the proxy)
# Then `podman build` with RUST_IMAGE and RUNTIME_IMAGE pointing at them.
#
# Containers run with buildah's chroot isolation (host network, no OCI runtime): in this sandbox
# crun and runc cannot set the container's rlimits (EPERM), so `podman run` fails before the
# entrypoint. The image is run as its own user, with its env, from its filesystem; the HEALTHCHECK
# command is run the same way. Elsewhere `podman run -p 8080:8080 -v models:/models` works as is.
#
# Usage: scripts/build-image.sh [--rebuild-bases]   (as root; installs podman, buildah and
# debootstrap from Debian if missing). Takes about 15-25 minutes on 2 cores, most of it cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEBIAN=localhost/wick-base/debian:bookworm
RUST=localhost/wick-base/rust:bookworm
IMAGE=localhost/wick:cpu
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
say() { echo "build-image: $*" >&2; }

if [[ ${1:-} == --rebuild-bases ]]; then
  podman rmi -f "$IMAGE" "$RUST" "$DEBIAN" >/dev/null 2>&1 || true
fi
need=()
for tool in podman buildah debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
model="$(./scripts/fetch-model.sh)"

start=$(date +%s)
if ! podman image exists "$DEBIAN"; then
  say "debootstrap bookworm (minbase) from $MIRROR"
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  # Keep the image small and its apt pointed at the same mirror.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$DEBIAN" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi
if ! podman image exists "$RUST"; then
  say "Rust builder base from $(rustc --version)"
  sysroot="$(rustc --print sysroot)"
  ctr=$(buildah from "$DEBIAN")
  buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates gcc libc6-dev pkg-config >/dev/null && rm -rf /var/lib/apt/lists/*'
  buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah copy "$ctr" "$sysroot" /usr/local/rust >/dev/null
  buildah run --isolation chroot "$ctr" -- sh -c 'mkdir -p /usr/local/cargo/bin && ln -s /usr/local/rust/bin/cargo /usr/local/rust/bin/rustc /usr/local/cargo/bin/'
  buildah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$ctr"
  buildah commit --rm "$ctr" "$RUST" >/dev/null
fi
say "base images ready after $(( $(date +%s) - start ))s"

build_start=$(date +%s)
# Buildah 1.28 decides which stages to skip before it expands ARGs, so `FROM runtime-${VARIANT}`
# names no stage for it; build a copy with the variant written out (Docker/BuildKit need not).
containerfile="$(mktemp)"
sed 's/\${VARIANT}/cpu/g' Dockerfile >"$containerfile"
podman build --isolation chroot --network host --format docker \
  --build-arg RUST_IMAGE="$RUST" --build-arg RUNTIME_IMAGE="$DEBIAN" \
  -t "$IMAGE" -f "$containerfile" . >&2
rm -f "$containerfile"
say "image built in $(( $(date +%s) - build_start ))s: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

# Run it: the model mounted read-only, as the image's user, on a loopback port of its own.
ctr=$(buildah from "$IMAGE")
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
log="$(mktemp)"
cleanup() {
  local rc=$?
  if [[ -n ${server:-} ]]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  ((rc == 0)) || tail -5 "$log" >&2 || true
  buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -f "$log"
  exit "$rc"
}
trap cleanup EXIT
# (buildah's chroot isolation leaves a mount over the image's VOLUME path empty, so the model
# goes beside it and WICK_MODEL points there.)
buildah run --isolation chroot --user "$user" -v "$(dirname "$model"):/mnt/models:ro" "$ctr" -- \
  sh -c "WICK_MODEL=/mnt/models/$(basename "$model") WICK_HOST=127.0.0.1 WICK_PORT=0 WICK_LOG_FORMAT=text exec wick serve --served-model-name smol" \
  >"$log" 2>&1 &
server=$!
base=""
for _ in $(seq 1 600); do
  kill -0 "$server" 2>/dev/null || { say "the server exited"; exit 1; }
  base=$(sed -n 's/^wick: listening on //p' "$log" | head -1)
  [[ -n $base ]] && curl -fsS "$base/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
[[ -n $base ]] || { say "the server did not start"; exit 1; }
say "ready on $base as user $(buildah run --isolation chroot --user "$user" "$ctr" -- id -u)"
health_cmd=$(podman image inspect "$IMAGE" --format '{{join .Config.Healthcheck.Test " "}}' | sed 's/^CMD-SHELL //')
buildah run --isolation chroot --user "$user" "$ctr" -- sh -c "export WICK_PORT=${base##*:}; $health_cmd" >/dev/null
say "HEALTHCHECK command passed: $health_cmd"
answer=$(curl -fsS "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "smol", "messages": [{"role": "user", "content": "What is 12 plus 30?"}], "temperature": 0, "max_tokens": 16}')
echo "$answer"
python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["choices"][0]["message"]["content"], r' "$answer"
say "/health 200, chat completion ok; total $(( $(date +%s) - start ))s"
