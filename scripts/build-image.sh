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
  buildah run "$ctr" -- sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates gcc libc6-dev pkg-config >/dev/null && rm -rf /var/lib/apt/lists/*'
  buildah copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah copy "$ctr" "$sysroot" /usr/local/rust >/dev/null
  buildah run "$ctr" -- sh -c 'mkdir -p /usr/local/cargo/bin && ln -s /usr/local/rust/bin/cargo /usr/local/rust/bin/rustc /usr/local/cargo/bin/'
  buildah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$ctr"
  buildah commit --rm "$ctr" "$RUST" >/dev/null
fi
say "base images ready after $(( $(date +%s) - start ))s"

build_start=$(date +%s)
podman build --network host \
  --build-arg RUST_IMAGE="$RUST" --build-arg RUNTIME_IMAGE="$DEBIAN" \
  -t "$IMAGE" -f Dockerfile . >&2
say "image built in $(( $(date +%s) - build_start ))s: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

# Run it: the model mounted read-only, the port published on loopback only.
name="wick-smoke-$$"
podman run -d --name "$name" -p 127.0.0.1::8080 \
  -v "$(dirname "$model"):/models:ro" -e WICK_SERVED_MODEL_NAME=smol "$IMAGE" >/dev/null
trap 'podman logs --tail 20 "$name" >&2 || true; podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
port=$(podman port "$name" 8080/tcp | head -1 | sed 's/.*://')
base="http://127.0.0.1:$port"
for _ in $(seq 1 300); do
  curl -fsS "$base/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
say "ready on $base; user $(podman exec "$name" id -u)"
health=$(curl -fsS -o /dev/null -w '%{http_code}' "$base/health")
[[ $health == 200 ]] || { say "/health answered $health"; exit 1; }
answer=$(curl -fsS "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "smol", "messages": [{"role": "user", "content": "What is 12 plus 30?"}], "temperature": 0, "max_tokens": 16}')
echo "$answer"
python3 -c 'import json, sys; r = json.loads(sys.argv[1]); assert r["choices"][0]["message"]["content"], r' "$answer"
sleep 16   # one HEALTHCHECK interval
status=$(podman inspect "$name" --format '{{.State.Health.Status}}' 2>/dev/null || echo unknown)
say "/health 200, chat completion ok, container health: $status; total $(( $(date +%s) - start ))s"
