#!/usr/bin/env bash
# Builds the deploy/ images with whatever container engine this machine has, then runs the
# image's smoke test (deploy/container_smoke.ts) against it.
#
#   deploy/container.sh cpu          # revunet-deno:cpu, then its smoke test
#   deploy/container.sh gpu          # revunet-deno:gpu (or :gpu-local, below), then its smoke test
#   deploy/container.sh all          # both
#   (or: deno task container <cpu|gpu|all>)
#
# Engine: docker when its daemon answers, else podman + buildah, installed with apt-get when
# missing (needs root), run with the vfs storage driver, chroot build isolation, the runc runtime
# and cgroupfs (what works on hosts with hybrid cgroups and no overlay mounts).
#
# Offline registries: when Docker Hub cannot be reached, the base is made here: a minimal Debian
# bookworm (debootstrap --variant=minbase from the mirror apt uses) carrying this host's CA
# certificates (so apt, npm and Deno inside the build trust the host's TLS proxy, if any),
# imported as localhost/debian:bookworm-slim; the CPU image is built on it. The GPU image's CUDA
# base (nvidia/cuda) cannot be made locally: then the GPU Dockerfile is built on the same local
# base with Mesa's software Vulkan driver (lavapipe) added, tagged revunet-deno:gpu-local, and its
# smoke test runs on --backend webgpu. When Google's storage (libtensorflow's download) cannot be
# reached, tfjs-node is left out (TFJS_NODE=0). The published Dockerfiles are unchanged in what
# they build on a machine with internet access: every local choice is a --build-arg.
#
# Environment:
#   REVUNET_ENGINE=docker|podman   force an engine
#   REVUNET_OFFLINE=1              treat the registries as unreachable (local base, no tfjs-node)
#   REVUNET_NO_SMOKE=1             build only
#   REVUNET_DEBIAN_MIRROR=URL      debootstrap's mirror (default: the first one apt uses)
#   REVUNET_STORAGE_DRIVER=vfs     podman/buildah storage driver
#   REVUNET_RUNTIME=runc           podman's OCI runtime
#   DENO=...                       the Deno that runs the smoke test on the host (default: deno on
#                                  PATH, else `npx -y deno@2`)
# Timings and sizes go to stdout and to .tmp/container/<image>.json.
set -euo pipefail

usage() {
  echo "usage: deploy/container.sh <cpu|gpu|all>" >&2
  exit 2
}
[ $# -eq 1 ] || usage
case "$1" in cpu) KINDS=(cpu) ;; gpu) KINDS=(gpu) ;; all) KINDS=(cpu gpu) ;; *) usage ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE="$ROOT/.tmp/container"
mkdir -p "$STATE"
LOCAL_BASE=localhost/debian:bookworm-slim

say() { echo "container.sh: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

# ---- the engine ---------------------------------------------------------------------------------

as_root_install() { # packages...
  [ "$(id -u)" = 0 ] || die "missing $*; install them (apt-get install $*) or run this as root"
  command -v apt-get >/dev/null || die "missing $* and no apt-get to install them"
  say "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; } \
    || die "apt-get install $* failed"
}

ENGINE=${REVUNET_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
case "$ENGINE" in
  docker)
    docker info >/dev/null 2>&1 || die "REVUNET_ENGINE=docker but no Docker daemon answers"
    engine() { docker "$@"; }
    build() { # dockerfile tag build-args...
      local file=$1 tag=$2
      shift 2
      DOCKER_BUILDKIT=1 docker build -f "$file" -t "$tag" "$@" .
    }
    ;;
  podman)
    missing=()
    for p in podman buildah runc; do command -v $p >/dev/null || missing+=($p); done
    [ ${#missing[@]} -eq 0 ] || as_root_install "${missing[@]}"
    DRIVER=${REVUNET_STORAGE_DRIVER:-vfs}
    RUNTIME=${REVUNET_RUNTIME:-runc}
    # Containers inherit no fixed RLIMIT_NOFILE (podman's default asks for more than some hosts
    # allow); a file of our own, unless the system's already sets default_ulimits.
    if ! grep -qs '^[[:space:]]*default_ulimits' /etc/containers/containers.conf; then
      printf '[containers]\ndefault_ulimits = []\n' >"$STATE/containers.conf"
      export CONTAINERS_CONF="$STATE/containers.conf"
    fi
    engine() { podman --storage-driver "$DRIVER" --runtime "$RUNTIME" --cgroup-manager cgroupfs "$@"; }
    build() { # dockerfile tag build-args...
      local file=$1 tag=$2
      shift 2
      buildah --storage-driver "$DRIVER" bud --isolation chroot --layers \
        --ignorefile "$file.dockerignore" -f "$file" -t "$tag" "$@" .
    }
    ;;
  *) die "REVUNET_ENGINE must be docker or podman, got \"$ENGINE\"" ;;
esac
say "engine: $ENGINE"

# ---- what the network allows --------------------------------------------------------------------

reachable() { curl -s -o /dev/null -m 15 "$1"; } # any HTTP answer counts
if [ "${REVUNET_OFFLINE:-0}" = 1 ]; then
  HUB=0 GCS=0
else
  HUB=1 GCS=1
  reachable https://registry-1.docker.io/v2/ || HUB=0
  reachable https://storage.googleapis.com/ || GCS=0
fi
TFJS_NODE=$GCS
[ "$HUB" = 1 ] || say "Docker Hub is unreachable: building on a local Debian base ($LOCAL_BASE)"
[ "$GCS" = 1 ] || say "storage.googleapis.com is unreachable: no tfjs-node (libtensorflow) in the images"

# The first Debian mirror apt uses (deb822 .sources or a one-line sources.list).
debian_mirror() {
  if [ -n "${REVUNET_DEBIAN_MIRROR:-}" ]; then echo "$REVUNET_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }')
  [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }')
  echo "${m:-http://deb.debian.org/debian}"
}

make_local_base() {
  if engine image exists "$LOCAL_BASE" 2>/dev/null \
    || { [ "$ENGINE" = docker ] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; }; then
    say "local base $LOCAL_BASE exists"
    return
  fi
  command -v debootstrap >/dev/null || as_root_install debootstrap
  [ "$(id -u)" = 0 ] || die "making the local base needs root (debootstrap)"
  local dir="$STATE/rootfs" mirror t0
  mirror=$(debian_mirror)
  t0=$(now)
  rm -rf "$dir"
  say "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
  # As in the official slim image: updates and security suites, no docs, man pages or locales.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    >"$dir/etc/apt/sources.list"
  if curl -fs -o /dev/null -m 15 "$mirror-security/dists/bookworm-security/Release"; then
    printf 'deb %s-security bookworm-security main\n' "$mirror" >>"$dir/etc/apt/sources.list"
  fi
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
    >"$dir/etc/dpkg/dpkg.cfg.d/docker"
  printf 'APT::Install-Recommends "false";\n' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
  # This host's trust store: the bundle, and the extra CAs that update-ca-certificates (run by
  # the build's ca-certificates install) folds back into it.
  mkdir -p "$dir/etc/ssl/certs" "$dir/usr/local/share/ca-certificates"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  # Deno reads the system store too (the image's own Mozilla set plus these CAs).
  tar -C "$dir" -c . | engine import --change 'ENV DENO_TLS_CA_STORE=mozilla,system' \
    --change 'CMD ["bash"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$dir"
  say "local base $LOCAL_BASE made in $(secs "$t0" "$(now)") s"
}

# ---- build, measure, smoke ----------------------------------------------------------------------

image_size() { engine image inspect --format '{{.Size}}' "$1"; }

DENO_CMD=(${DENO:-})
if [ ${#DENO_CMD[@]} -eq 0 ]; then
  if command -v deno >/dev/null; then DENO_CMD=(deno); else DENO_CMD=(npx -y deno@2); fi
fi

for kind in "${KINDS[@]}"; do
  args=() backend=cpu
  if [ "$HUB" = 0 ]; then
    make_local_base
    args+=(--build-arg "BASE=$LOCAL_BASE")
  fi
  args+=(--build-arg "TFJS_NODE=$TFJS_NODE")
  tag=revunet-deno:$kind
  if [ "$kind" = gpu ]; then
    backend=webgpu
    if [ "$HUB" = 0 ]; then
      # No CUDA base here: the same Dockerfile on Debian, Vulkan on Mesa's software driver.
      tag=revunet-deno:gpu-local
      args+=(--build-arg "NODE_IMAGE=$LOCAL_BASE" --build-arg "EXTRA_PACKAGES=mesa-vulkan-drivers")
    fi
  fi
  say "building $tag from deploy/Dockerfile.$kind ${args[*]}"
  t0=$(now)
  if ! build "deploy/Dockerfile.$kind" "$tag" "${args[@]}" 2>&1 | tee "$STATE/build-$kind.log" >&2; then
    die "building $tag failed (log: $STATE/build-$kind.log)"
  fi
  build_s=$(secs "$t0" "$(now)")
  size=$(image_size "$tag")
  say "$tag: built in $build_s s, $((size / 1000000)) MB"
  smoke_s=null
  if [ "${REVUNET_NO_SMOKE:-0}" != 1 ]; then
    t0=$(now)
    "${DENO_CMD[@]}" run -A --lock=tests/deno.lock deploy/container_smoke.ts \
      --engine "$ENGINE" --image "$tag" --backend "$backend" | tee "$STATE/smoke-$kind.json" \
      || die "the smoke test of $tag failed"
    smoke_s=$(secs "$t0" "$(now)")
    say "$tag: smoke test passed in $smoke_s s"
  fi
  printf '{"image":"%s","engine":"%s","build_s":%s,"size_bytes":%s,"smoke_s":%s,"tfjs_node":%s,"local_base":%s}\n' \
    "$tag" "$ENGINE" "$build_s" "$size" "$smoke_s" "$TFJS_NODE" "$([ "$HUB" = 0 ] && echo true || echo false)" \
    | tee "$STATE/${tag#revunet-deno:}.json"
done
