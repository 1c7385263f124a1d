#!/usr/bin/env bash
# Fills .device/ (git-ignored) with what the lent GPU machine lacks, so that deploy/device/run.sh
# can run the benchmarks there with no network: the Deno binary (compressed), the npm files the
# bench actually loads (a trimmed node_modules), and the Vulkan loader debs for the WebGPU backend
# (plus the X11 libraries the NVIDIA Vulkan driver links against, used there only if missing).
# Run it here, from anywhere in the checkout; it needs the npm registry (for `npx deno@2` when no
# deno is on PATH), Debian's apt (for the debs), strace (installed with apt when missing) and
# Mesa's Vulkan drivers for a WebGPU trace (else the trace runs on the cpu backend).
#
# Environment:
#   DENO_BIN=path        the Deno binary to pack (default: deno on PATH, else npx -y deno@2)
#   PACK_COMPRESS=xz|gz  how the binary is compressed (default xz: 28 MiB; gz: 40 MiB)
#   PACK_LIMIT_MIB=60    fail when .device/ plus the files that travel exceed this
#   PACK_VERIFY=0        skip the offline check of the kit in a fresh copy of the tree
#   PACK_DEBS=0          keep .device/gl as it is (no apt-get)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
KIT=$ROOT/.device
LIMIT_MIB=${PACK_LIMIT_MIB:-60}
COMPRESS=${PACK_COMPRESS:-xz}
TMP=$(mktemp -d /tmp/revunet-pack.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
log() { echo "pack: $*" >&2; }
die() {
  echo "pack: error: $*" >&2
  exit 1
}
PY=$(command -v /usr/bin/python3 || command -v python3) || die "python3 is needed"
mkdir -p "$KIT"

# ---- 1. the Deno binary ---------------------------------------------------------------------------
DENO=${DENO_BIN:-}
if [ -z "$DENO" ]; then
  if command -v deno >/dev/null 2>&1; then
    DENO=$(cd / && deno eval 'console.log(Deno.execPath())')
  else
    DENO=$(cd / && npx -y deno@2 eval 'console.log(Deno.execPath())')
  fi
fi
[ -x "$DENO" ] || die "no Deno binary at '$DENO'"
# The device is x86-64: ELF e_machine 0x3e.
[ "$(od -An -tx1 -j18 -N2 "$DENO" | tr -d ' \n')" = "3e00" ] || die "$DENO is not an x86-64 binary"
DENO_VERSION=$("$DENO" --version | head -1)
DENO_SHA=$(sha256sum "$DENO" | cut -d' ' -f1)
case $COMPRESS in
  xz) ext=xz ;;
  gz | gzip) ext=gz ;;
  *) die "PACK_COMPRESS must be xz or gz, got $COMPRESS" ;;
esac
if [ -f "$KIT/deno.$ext" ] && [ "$(cat "$KIT/deno.sha256" 2>/dev/null)" = "$DENO_SHA" ]; then
  log "deno: $KIT/deno.$ext is already $DENO_VERSION ($DENO_SHA)"
else
  log "deno: compressing $DENO ($DENO_VERSION) with $ext (xz -9 takes a minute or two)"
  if [ "$ext" = xz ]; then
    xz -T0 -9 -c "$DENO" >"$TMP/deno.$ext"
  else
    gzip -9 -c "$DENO" >"$TMP/deno.$ext"
  fi
  rm -f "$KIT"/deno.xz "$KIT"/deno.gz
  mv "$TMP/deno.$ext" "$KIT/deno.$ext"
  echo "$DENO_SHA" >"$KIT/deno.sha256"
fi

# ---- 2. the npm files the bench loads --------------------------------------------------------------
log "node_modules: deno install, then a traced bench run to see which files are read"
"$DENO" install >"$TMP/install.log" 2>&1 || {
  cat "$TMP/install.log" >&2
  die "deno install failed"
}
if ! command -v strace >/dev/null 2>&1; then
  log "installing strace with apt-get"
  { apt-get update -qq && apt-get install -y -qq strace; } >"$TMP/apt-strace.log" 2>&1 ||
    die "strace is missing and apt-get could not install it (see apt-get install strace)"
fi
trace_run() { # backend, then extra environment
  local backend=$1
  shift
  env "$@" NO_COLOR=1 strace -f -qq -e trace=%file -o "$TMP/trace.$backend" \
    "$DENO" run -A --unstable-webgpu main.ts bench speed --backend "$backend" --crop 16 --steps 1 \
    --case-sizes 16x16x16 --no-peer >"$TMP/trace-run.$backend.log" 2>&1
}
if trace_run webgpu REVUNET_NATIVE=1; then
  traced=webgpu
  strace -f -qq -e trace=%file -o "$TMP/trace.probe" \
    "$DENO" run -A --unstable-webgpu deploy/device/probe.ts >"$TMP/probe.log" 2>&1 || true
else
  log "no WebGPU here ($(tail -1 "$TMP/trace-run.webgpu.log")); tracing the cpu backend instead"
  trace_run cpu REVUNET_NATIVE=0 || {
    cat "$TMP/trace-run.cpu.log" >&2
    die "the traced bench run failed"
  }
  traced=cpu
fi
cat "$TMP"/trace.* >"$TMP/trace"
"$PY" - "$ROOT" "$TMP/trace" "$TMP/files" <<'EOF'
import json, os, re, sys
root, trace, out = sys.argv[1:]
nm = os.path.join(root, "node_modules")
files = set()
def add(path):
    rel = os.path.relpath(path, root)
    if not rel.startswith(".."):
        files.add(rel)
# Files the traced runs opened or looked at (any file system call; lookups of files that do not
# exist drop out below), resolved through the .deno symlinks. strace splits some calls in two
# ("<unfinished ...>"), so the result is not needed on the line.
opened = re.compile(r'^\d+\s+\w+\((?:[^"]*?)"([^"]+)"')
touched = set()
with open(trace, errors="replace") as f:
    for line in f:
        m = opened.match(line)
        if not m:
            continue
        p = os.path.realpath(os.path.join(root, m.group(1)))
        if p.startswith(nm + os.sep) and os.path.isfile(p):
            add(p)
            parts = os.path.relpath(p, nm).split(os.sep)
            if len(parts) > 1 and parts[0] == ".deno":
                touched.add(parts[1])
# Every symlink and package.json (Deno reads them to resolve and to decide each file's module
# type), the install markers and setup cache (so nothing is reinstalled), for every package.
for dirpath, dirnames, filenames in os.walk(nm):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        if os.path.islink(p):
            add(p)
        elif name in ("package.json", ".initialized", ".setup-cache.bin") and os.path.isfile(p):
            add(p)
# The main file of each package the runs touched and of each direct dependency (deno.json's
# imports), in case a code path that did not run here loads it.
direct = set()
with open(os.path.join(root, "deno.json")) as f:
    for spec in json.load(f).get("imports", {}).values():
        m = re.match(r"npm:(@?[^@]+)@(.+)$", spec)
        if m:
            direct.add(m.group(1).replace("/", "+") + "@" + m.group(2))
deno_dir = os.path.join(nm, ".deno")
for entry in sorted(os.listdir(deno_dir)):
    if entry not in touched and not any(entry == d or entry.startswith(d + "_") for d in direct):
        continue
    inner = os.path.join(deno_dir, entry, "node_modules")
    name = entry.split("@")[0] if not entry.startswith("@") else "@" + entry[1:].split("@")[0]
    pkg = os.path.join(inner, *name.split("+", 1))
    try:
        with open(os.path.join(pkg, "package.json")) as f:
            main = json.load(f).get("main") or "index.js"
    except (OSError, ValueError):
        continue
    for cand in (main, main + ".js", os.path.join(main, "index.js")):
        p = os.path.join(pkg, cand)
        if os.path.isfile(p) and not os.path.islink(p):
            add(os.path.realpath(p))
            break
with open(out, "w") as f:
    f.write("\n".join(sorted(files)) + "\n")
EOF
tar -czf "$TMP/node_modules.tar.gz" --no-recursion -C "$ROOT" -T "$TMP/files"
mv "$TMP/node_modules.tar.gz" "$KIT/node_modules.tar.gz"
nm_files=$(wc -l <"$TMP/files")
nm_bytes=$(tr '\n' '\0' <"$TMP/files" | (cd "$ROOT" && xargs -0 stat -c %s 2>/dev/null) |
  awk '{s+=$1} END {print s+0}')
log "node_modules: $nm_files entries, $((nm_bytes / 1024)) KiB (of $(du -sh node_modules | cut -f1)), traced on $traced"

# ---- 3. the Vulkan loader debs ---------------------------------------------------------------------
if [ "${PACK_DEBS:-1}" != 0 ]; then
  log "debs: apt-get download of the Vulkan/GL loaders (amd64)"
  mkdir -p "$TMP/gl" /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  if apt-get $o update >"$TMP/apt.log" 2>&1 &&
    (cd "$TMP/gl" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 \
      libgles2) >>"$TMP/apt.log" 2>&1; then
    rm -rf "$KIT/gl"
    mkdir -p "$KIT/gl"
    mv "$TMP"/gl/*.deb "$KIT/gl/"
    # The X11 libraries the NVIDIA ICD (libGLX_nvidia.so.0) links against, in case the machine
    # lacks them: run.sh unpacks these outside / and only when ldd says one is missing.
    mkdir -p "$TMP/x11"
    if (cd "$TMP/x11" && apt-get $o download libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 \
      libmd0) >>"$TMP/apt.log" 2>&1; then
      rm -rf "$KIT/x11"
      mkdir -p "$KIT/x11"
      mv "$TMP"/x11/*.deb "$KIT/x11/"
    else
      log "debs: the X11 libraries could not be downloaded ($(tail -1 "$TMP/apt.log")); going on without"
    fi
  elif ls "$KIT"/gl/*.deb >/dev/null 2>&1; then
    log "debs: apt-get failed ($(tail -1 "$TMP/apt.log")); keeping the debs already in .device/gl"
  else
    cat "$TMP/apt.log" >&2
    die "could not download the Vulkan loader debs"
  fi
fi
ls "$KIT"/gl/*.deb >/dev/null 2>&1 || die ".device/gl has no debs (run without PACK_DEBS=0)"
# Plain names (apt writes an epoch's colon as %3a): only letters, digits, '.', '_' and '-'.
for f in "$KIT"/gl/*.deb "$KIT"/x11/*.deb; do
  [ -e "$f" ] || continue
  plain=$(dirname "$f")/$(basename "$f" | sed 's/%3a/_/g; s/[^A-Za-z0-9._-]/_/g')
  [ "$f" = "$plain" ] || mv "$f" "$plain"
done

# ---- 4. the manifest -----------------------------------------------------------------------------
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
{
  echo "created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$commit"
  echo "deno_version=$DENO_VERSION"
  echo "deno_file=deno.$ext"
  echo "deno_sha256=$DENO_SHA"
  echo "deno_lock_sha256=$(sha256sum deno.lock | cut -d' ' -f1)"
  echo "node_modules_entries=$nm_files"
  echo "node_modules_bytes=$nm_bytes"
  echo "node_modules_traced_on=$traced"
  echo "debs=$(cd "$KIT/gl" && ls ./*.deb | sed 's|^\./||' | tr '\n' ' ')"
  echo "x11_debs=$(cd "$KIT/x11" 2>/dev/null && ls ./*.deb 2>/dev/null | sed 's|^\./||' | tr '\n' ' ')"
} >"$KIT/MANIFEST.txt"

# ---- 5. an offline check in a fresh copy of what travels --------------------------------------------
if [ "${PACK_VERIFY:-1}" != 0 ]; then
  log "verify: fresh copy of the tree + .device, empty DENO_DIR, no deno/node on PATH, no network"
  tree=$TMP/tree
  mkdir -p "$tree"
  git ls-files -co --exclude-standard -z | tar -cf - --null -T - | tar -xf - -C "$tree"
  cp -r "$KIT" "$tree/.device"
  mkdir -p "$tree/.v"
  (cd "$tree" && tar -xzf .device/node_modules.tar.gz)
  if [ "$ext" = xz ]; then xz -dc "$KIT/deno.xz" >"$tree/.v/deno"; else gzip -dc "$KIT/deno.gz" >"$tree/.v/deno"; fi
  chmod +x "$tree/.v/deno"
  [ "$(sha256sum "$tree/.v/deno" | cut -d' ' -f1)" = "$DENO_SHA" ] || die "verify: the unpacked deno differs"
  netns=()
  if unshare -n true 2>/dev/null; then netns=(unshare -n); fi
  if ! (cd "$tree" && "${netns[@]}" env -i PATH=/usr/bin:/bin HOME="$tree/.v/home" \
    DENO_DIR="$tree/.v/deno-dir" DENO_NO_UPDATE_CHECK=1 NO_COLOR=1 REVUNET_NATIVE=0 \
    .v/deno run -A --unstable-webgpu --cached-only main.ts bench speed --backend "$traced" \
    --crop 16 --steps 1 --case-sizes 16x16x16 --no-peer) >"$TMP/verify.log" 2>&1; then
    tail -20 "$TMP/verify.log" >&2
    die "verify: the bench did not run from the kit"
  fi
  log "verify: ok (${netns[*]:-network not isolated}): $(grep -m1 'train step' "$TMP/verify.log" | sed 's/^ *//')"
fi

# ---- 6. the size of what travels -------------------------------------------------------------------
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null |
  awk '{s+=$1} END {print s+0}')
kit_bytes=$(du -sb "$KIT" | cut -f1)
total=$((tree_bytes + kit_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "pack: .device/ $(mib "$kit_bytes") MiB + working tree $(mib "$tree_bytes") MiB = $(mib "$total") MiB (limit $LIMIT_MIB MiB)"
(cd "$KIT" && find . -type f -printf '%s\t%p\n' | sort -k2 | awk -F'\t' '{printf "  %9.1f KiB  %s\n", $1/1024, $2}')
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  die "what travels is $(mib "$total") MiB, over $LIMIT_MIB MiB"
fi
