#!/usr/bin/env bash
# Runs the GPU checks on the lent GPU machine (no network, no Deno, no Vulkan loader) from the kit
# that deploy/device/pack.sh put in .device/: unpacks Deno and the trimmed node_modules, installs
# the Vulkan loader debs when none is there, prints nvidia-smi, what torch sees and the WebGPU
# adapter Deno sees, then runs, each under its own timeout inside one overall budget:
#
#   bench-webgpu-<c>       bench speed --backend webgpu --crop c (c in DEVICE_CROPS), small cases
#                          (c³, c×c×2c, c×c×4c) and the PyTorch peer on CUDA in the same run
#   kernels-webgpu         bench kernels --backend webgpu --crop DEVICE_KERNEL_CROP: each project
#                          kernel at the network's shapes against what it replaces (untiled
#                          depthwise programs, tfjs's convolution-filter gradient)
#   peer-<dev>             python3 pipeline/training/bench/peer_torch.py --check, then --crop p (p in DEVICE_PEER_CROPS)
#                          alone on CUDA: figures even when Deno cannot start
#   bench-webgpu-<c>-full  bench speed --crop c --case-sizes 240x240x155 --steps 1 --no-peer (c in
#                          DEVICE_FULL_CROPS): the whole-case seconds, the slow part, last
#
# Usage, from the repository root, OUT set to the folder that comes back:
#   bash deploy/device/run.sh
# Writes at most 8 files to $OUT: device.log (everything printed), summary.json (what was found,
# every step's status and JSON, and "highlights"), bench-webgpu-<c>[-full].json, kernels-webgpu.json,
# peer-<dev>.jsonl.
#
# Environment (defaults are for the H200; smaller values for a CPU-only rehearsal):
#   DEVICE_BUDGET_S=420         seconds for everything; a step gets min(its cap, what is left)
#   DEVICE_CROPS="32 64"        crops of the bench runs with small cases and the peer
#   DEVICE_FULL_CROPS="64 32"   crops (= windows) of the whole-case runs, in this order; "" skips
#   DEVICE_FULL_CASE=240x240x155  the whole case's size
#   DEVICE_SMALL_CASES=auto     --case-sizes of the first runs (auto: c³,c×c×2c,c×c×4c; or "none")
#   DEVICE_STEPS=3              --steps of the first runs
#   DEVICE_KERNEL_CROP=128      crop of the bench kernels run; "" skips it
#   DEVICE_PEER_CROPS="32 64 128"  crops of the standalone peer runs; "" skips them
#   DEVICE_PEER_DEVICE=auto     cuda when torch sees CUDA, else cpu (and says so); or cuda, cpu
#   DEVICE_BACKEND=webgpu       --backend of the bench runs
#   DEVICE_T_BENCH=150 DEVICE_T_PEER=90 DEVICE_T_FULL=300  per-step caps (seconds)
#   DEVICE_INSTALL_DEBS=auto    auto: dpkg -x the debs into / only when no libvulkan.so.1; 1; 0
#   DEVICE_WORK=/tmp/revunet-device  scratch space (Deno binary, DENO_DIR, step outputs)
#   DEVICE_NVIDIA_DIR=/usr/local/nvidia  where the driver's Vulkan ICD and EGL vendor files are
#   REVUNET_PEER_PYTHON         the peer's Python (default: python3 on PATH)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
START=$(date +%s)
if [ -z "${OUT:-}" ]; then
  echo "run.sh: set OUT to the folder whose files come back" >&2
  exit 2
fi
mkdir -p "$OUT"
KIT=${DEVICE_KIT:-$ROOT/.device}
WORK=${DEVICE_WORK:-/tmp/revunet-device}
BUDGET=${DEVICE_BUDGET_S:-420}
CROPS=${DEVICE_CROPS-32 64}
FULL_CROPS=${DEVICE_FULL_CROPS-64 32}
FULL_CASE=${DEVICE_FULL_CASE:-240x240x155}
SMALL_CASES=${DEVICE_SMALL_CASES:-auto}
STEPS=${DEVICE_STEPS:-3}
PEER_CROPS=${DEVICE_PEER_CROPS-32 64 128}
KERNEL_CROP=${DEVICE_KERNEL_CROP-128}
PEER_DEVICE=${DEVICE_PEER_DEVICE:-auto}
BACKEND=${DEVICE_BACKEND:-webgpu}
T_BENCH=${DEVICE_T_BENCH:-150}
T_PEER=${DEVICE_T_PEER:-90}
T_FULL=${DEVICE_T_FULL:-300}
RESERVE=10 # seconds kept back at the end for the summary
export PATH=$PATH:/usr/sbin:/sbin # ldconfig
MAX_OUT_FILES=8

rm -rf "$WORK/steps" "$WORK/steps.tsv" "$WORK/facts.tsv"
mkdir -p "$WORK/steps" "$WORK/bin"
LOG=$OUT/device.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(date +%s) + START)); }
now() { date +%s.%N; }
say() { echo "[$(elapsed)s] $*"; }
fact() {
  printf '%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n' '  ')" >>"$WORK/facts.tsv"
  say "fact: $1 = $2"
}
summarize() {
  if command -v python3 >/dev/null 2>&1 &&
    python3 "$ROOT/deploy/device/summary.py" "$WORK" >"$WORK/summary.json" 2>"$WORK/summary.err"; then
    cp "$WORK/summary.json" "$OUT/summary.json"
  else
    say "summary.json not written: $(tail -1 "$WORK/summary.err" 2>/dev/null || echo 'no python3')"
  fi
}
record() { # name status rc seconds json note
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$(printf '%s' "$6" | tr '\t\n' '  ')" \
    >>"$WORK/steps.tsv"
  summarize
}
# Copies a result into $OUT while fewer than MAX_OUT_FILES are there (device.log and summary.json
# always fit: they are there first).
out_copy() {
  local n
  n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  [ -e "$OUT/summary.json" ] || n=$((n + 1))
  if [ -e "$OUT/$2" ] || [ "$n" -lt "$MAX_OUT_FILES" ]; then
    cp "$1" "$OUT/$2"
  else
    say "not copied to \$OUT (at most $MAX_OUT_FILES files): $2 (it is in summary.json)"
  fi
}

# run_step NAME CAP JSON_KIND COMMAND...: runs COMMAND under timeout min(CAP, budget left), its
# stderr into the log as it comes, its stdout after; JSON_KIND "last" keeps the last stdout line
# that is a JSON object as $WORK/steps/NAME.json, "all" every such line as NAME.jsonl, "-" none.
# Sets STEP_JSON to that file (or "-") and returns the command's exit code (124: timed out).
run_step() {
  local name=$1 cap=$2 kind=$3 t rc s secs status last note=""
  shift 3
  STEP_JSON=-
  t=$(($(left) - RESERVE))
  [ "$t" -gt "$cap" ] && t=$cap
  if [ "$t" -lt 15 ]; then
    say "== $name: skipped, $(left) s of the budget left"
    record "$name" skipped "" 0 - "skipped: $(left) s of the ${BUDGET} s budget left"
    return 125
  fi
  say "== $name (timeout ${t}s): $*"
  s=$(now)
  # stdout to NAME.out, stderr through tee into the log as it comes and into NAME.err
  timeout -k 10 "$t" "$@" 2>&1 >"$WORK/steps/$name.out" | tee "$WORK/steps/$name.err"
  rc=${PIPESTATUS[0]}
  secs=$(awk -v a="$s" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')
  cat "$WORK/steps/$name.out"
  last=$(grep '^error' "$WORK/steps/$name.err" | tail -1)
  [ -n "$last" ] || last=$(grep -v '^[[:space:]]*$' "$WORK/steps/$name.err" | tail -1)
  last=$(cut -c1-300 <<<"$last")
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout note="killed after ${t} s; last: $last" ;;
    *) status=failed note="exit $rc: $last" ;;
  esac
  if [ "$kind" = last ]; then
    STEP_JSON=$WORK/steps/$name.json
    grep '^{' "$WORK/steps/$name.out" | tail -1 >"$STEP_JSON"
  elif [ "$kind" = all ]; then
    STEP_JSON=$WORK/steps/$name.jsonl
    grep '^{' "$WORK/steps/$name.out" >"$STEP_JSON"
  fi
  if [ "$STEP_JSON" != - ] && [ ! -s "$STEP_JSON" ]; then
    rm -f "$STEP_JSON"
    STEP_JSON=-
  fi
  say "== $name: $status in ${secs}s${note:+ ($note)}"
  record "$name" "$status" "$rc" "$secs" "$STEP_JSON" "$note"
  return "$rc"
}

say "RevUNet-Deno device checks in $ROOT, OUT=$OUT, budget ${BUDGET}s"
fact host "$(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
fact kit "$(tr '\n' ' ' <"$KIT/MANIFEST.txt" 2>/dev/null || echo "no $KIT/MANIFEST.txt: run deploy/device/pack.sh here first and carry .device")"
fact commit "$(git rev-parse HEAD 2>/dev/null || echo 'no git here')"
lock_now=$(sha256sum deno.lock 2>/dev/null | cut -d' ' -f1)
if [ -f "$KIT/MANIFEST.txt" ] && ! grep -q "deno_lock_sha256=$lock_now" "$KIT/MANIFEST.txt"; then
  fact kit_warning "deno.lock changed since the kit was packed: npm files may be missing (re-run pack.sh)"
fi

# ---- the GPU and CUDA ---------------------------------------------------------------------------
say "== nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 30 nvidia-smi
  fact gpu "$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2)"
else
  fact gpu "nvidia-smi not found: no NVIDIA driver visible on this machine"
fi
PY=$(command -v python3 || true)
PEER_PY=${REVUNET_PEER_PYTHON:-$PY}
export REVUNET_PEER_PYTHON=$PEER_PY
fact peer_python "${PEER_PY:-none}"
torch_json=$WORK/steps/torch.json
if [ -n "$PEER_PY" ] && timeout 120 "$PEER_PY" -c '
import json, sys
try:
    import torch
except Exception as e:
    print(json.dumps({"python": sys.executable, "torch": None, "error": str(e)})); sys.exit(0)
cuda = torch.cuda.is_available()
print(json.dumps({"python": sys.executable, "torch": torch.__version__, "cuda_available": cuda,
    "cuda_version": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
    "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}))
' >"$torch_json" 2>"$WORK/steps/torch.err"; then
  fact torch "$(cat "$torch_json")"
else
  echo "{\"error\": \"$(tail -1 "$WORK/steps/torch.err" 2>/dev/null | tr -d '"\\')\"}" >"$torch_json"
  fact torch "could not ask ${PEER_PY:-python3}: $(cat "$torch_json")"
fi
if grep -q '"cuda_available": true' "$torch_json"; then HAVE_CUDA=1; else HAVE_CUDA=0; fi
fact cuda "$([ $HAVE_CUDA = 1 ] && echo "torch sees CUDA" || echo "NO CUDA: torch.cuda.is_available() is not true (the peer runs on the cpu)")"

# ---- Deno and the npm files ---------------------------------------------------------------------
DENO=$WORK/bin/deno
want_sha=$(cat "$KIT/deno.sha256" 2>/dev/null || true)
unpack_deno() {
  local src
  if [ -f "$KIT/deno.xz" ]; then
    src=$KIT/deno.xz
    if command -v xz >/dev/null 2>&1; then
      xz -dc "$src" >"$DENO.part"
    elif [ -n "$PY" ]; then
      "$PY" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' "$src" "$DENO.part"
    else
      echo "no xz and no python3 to unpack $src" >&2
      return 1
    fi
  elif [ -f "$KIT/deno.gz" ]; then
    gzip -dc "$KIT/deno.gz" >"$DENO.part"
  else
    echo "no $KIT/deno.xz or deno.gz" >&2
    return 1
  fi
  chmod +x "$DENO.part" && mv "$DENO.part" "$DENO"
}
DENO_OK=0
if [ -x "$DENO" ] && [ "$(sha256sum "$DENO" | cut -d' ' -f1)" = "$want_sha" ]; then
  say "deno: already unpacked at $DENO"
else
  say "deno: unpacking"
  unpack_deno || say "deno: unpacking failed"
fi
if [ -x "$DENO" ] && [ -n "$want_sha" ] && [ "$(sha256sum "$DENO" | cut -d' ' -f1)" != "$want_sha" ]; then
  say "deno: sha256 differs from the kit's $want_sha"
fi
if [ -f "$KIT/node_modules.tar.gz" ]; then
  tar -xzf "$KIT/node_modules.tar.gz" -C "$ROOT" || say "node_modules: unpacking failed"
else
  say "node_modules: $KIT/node_modules.tar.gz is missing"
fi
export DENO_DIR=$WORK/deno-dir DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1 NO_COLOR=1
export HOME=${HOME:-$WORK/home}
if [ -x "$DENO" ] && deno_version=$("$DENO" --version 2>&1 | head -1); then
  DENO_OK=1
  fact deno "$deno_version"
else
  fact deno "NOT AVAILABLE: ${deno_version:-$DENO missing}; the bench steps are skipped"
fi
DENO_RUN=("$DENO" run -A --unstable-webgpu --cached-only)

# ---- Vulkan --------------------------------------------------------------------------------------
# Whether the dynamic linker finds a library: ldconfig's cache, else the usual folders.
have_lib() {
  if command -v ldconfig >/dev/null 2>&1; then
    ldconfig -p | grep -q "[[:space:]]$1 "
  else
    ls /usr/lib/x86_64-linux-gnu/"$1" /lib/x86_64-linux-gnu/"$1" /usr/lib64/"$1" /usr/lib/"$1" \
      >/dev/null 2>&1
  fi
}
install_debs=${DEVICE_INSTALL_DEBS:-auto}
if [ "$install_debs" = auto ]; then
  if have_lib libvulkan.so.1; then install_debs=0; else install_debs=1; fi
fi
if [ "$install_debs" = 1 ]; then
  if command -v dpkg >/dev/null 2>&1; then
    for f in "$KIT"/gl/*.deb; do dpkg -x "$f" / || say "dpkg -x $f failed"; done
    ldconfig || say "ldconfig failed"
    fact vulkan_loader "installed from $(ls "$KIT"/gl/*.deb | wc -l) debs in .device/gl"
  else
    fact vulkan_loader "no dpkg here: could not install the debs"
  fi
elif have_lib libvulkan.so.1; then
  fact vulkan_loader "already present: $(ldconfig -p 2>&1 | grep -m1 'libvulkan\.so\.1' | sed 's/^[[:space:]]*//')"
else
  fact vulkan_loader "NONE: no libvulkan.so.1 and the debs were not installed (DEVICE_INSTALL_DEBS=$install_debs)"
fi
NV=${DEVICE_NVIDIA_DIR:-/usr/local/nvidia} # the driver folder the device mounts
if ! have_lib libGLX_nvidia.so.0; then
  for d in "$NV/lib64" "$NV/lib"; do
    if [ -e "$d/libGLX_nvidia.so.0" ]; then
      export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      fact ld_library_path "$LD_LIBRARY_PATH (libGLX_nvidia.so.0 was not in ldconfig's cache)"
      break
    fi
  done
fi

# The NVIDIA Vulkan driver's library and what it cannot find (a missing X11 or GLVND library
# makes the loader skip the driver without a word).
nv_icd=$NV/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$nv_icd" ]; then
  icd_lib=$(sed -n 's/.*"library_path"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$nv_icd" | head -1)
  case $icd_lib in
    /*) icd_path=$icd_lib ;;
    *) icd_path=$(ldconfig -p 2>/dev/null | grep -m1 "[[:space:]]${icd_lib:-libGLX_nvidia.so.0} " | sed 's/.*=> //') ;;
  esac
  if [ -n "$icd_path" ] && [ -e "$icd_path" ]; then
    missing=$(ldd "$icd_path" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
    fact nvidia_icd "$nv_icd -> $icd_path${missing:+; MISSING: $missing}"
    # Missing X11 libraries: the kit's debs, unpacked outside / and put on LD_LIBRARY_PATH.
    if [ -n "$missing" ] && ls "$KIT"/x11/*.deb >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
      x11=$WORK/x11root
      for f in "$KIT"/x11/*.deb; do dpkg -x "$f" "$x11" || say "dpkg -x $f failed"; done
      export LD_LIBRARY_PATH=$x11/usr/lib/x86_64-linux-gnu:$x11/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      missing=$(ldd "$icd_path" 2>&1 | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
      fact nvidia_icd_x11 "unpacked .device/x11 into $x11; still missing: ${missing:-nothing}"
    fi
  else
    fact nvidia_icd "$nv_icd names ${icd_lib:-nothing}, not found by ldconfig"
  fi
else
  fact nvidia_icd "no $nv_icd"
fi

probe_raw() {
  [ "$DENO_OK" = 1 ] || return 1
  timeout 60 "${DENO_RUN[@]}" deploy/device/probe.ts --raw 2>&1 | grep '^{' | tail -1
}
if [ "$DENO_OK" = 1 ]; then
  raw=$(probe_raw)
  fact webgpu_adapter "${raw:-probe failed}"
  if { [ -z "$raw" ] || ! grep -q '"ok":true' <<<"$raw" || grep -q '"fallback":true' <<<"$raw"; } &&
    [ -f "$nv_icd" ]; then
    export VK_DRIVER_FILES=$nv_icd VK_ICD_FILENAMES=$nv_icd
    egl=$NV/share/glvnd/egl_vendor.d/10_nvidia.json
    [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    raw=$(probe_raw)
    fact webgpu_adapter_with_nvidia_icd "VK_DRIVER_FILES=$nv_icd: ${raw:-probe failed}"
  fi
  run_step probe 90 last "${DENO_RUN[@]}" deploy/device/probe.ts
else
  record probe skipped "" 0 - "deno not available"
fi
ADAPTER_OK=0
[ "$DENO_OK" = 1 ] && grep -q '"project":{"ok":true' "$WORK/steps/probe.json" 2>/dev/null && ADAPTER_OK=1

# ---- the benchmarks ------------------------------------------------------------------------------
bench() { # name cap json-name args...
  local name=$1 cap=$2
  shift 2
  if [ "$DENO_OK" != 1 ]; then
    record "$name" skipped "" 0 - "deno not available"
    return
  fi
  if [ "$BACKEND" = webgpu ] && [ "$ADAPTER_OK" != 1 ]; then
    record "$name" skipped "" 0 - "no WebGPU adapter (see the probe step)"
    return
  fi
  run_step "$name" "$cap" last "${DENO_RUN[@]}" main.ts bench speed --backend "$BACKEND" "$@"
  [ "$STEP_JSON" != - ] && out_copy "$STEP_JSON" "$name.json"
}
for c in $CROPS; do
  cases=$SMALL_CASES
  [ "$cases" = auto ] && cases="${c}x${c}x${c},${c}x${c}x$((2 * c)),${c}x${c}x$((4 * c))"
  bench "bench-$BACKEND-$c" "$T_BENCH" --crop "$c" --steps "$STEPS" --case-sizes "$cases"
done

# Each of the project's kernels alone (the depthwise ones tiled and untiled): where the time goes.
if [ -n "$KERNEL_CROP" ]; then
  if [ "$DENO_OK" != 1 ]; then
    record "kernels-$BACKEND" skipped "" 0 - "deno not available"
  elif [ "$BACKEND" = webgpu ] && [ "$ADAPTER_OK" != 1 ]; then
    record "kernels-$BACKEND" skipped "" 0 - "no WebGPU adapter (see the probe step)"
  else
    run_step "kernels-$BACKEND" 90 last "${DENO_RUN[@]}" main.ts bench kernels \
      --backend "$BACKEND" --crop "$KERNEL_CROP" --steps 5
    [ "$STEP_JSON" != - ] && out_copy "$STEP_JSON" "kernels-$BACKEND.json"
  fi
fi

if [ -n "$PEER_CROPS" ] && [ -n "$PEER_PY" ]; then
  dev=$PEER_DEVICE
  if [ "$dev" = auto ]; then
    if [ $HAVE_CUDA = 1 ]; then dev=cuda; else dev=cpu; fi
  fi
  threads=$(nproc)
  : >"$WORK/peer.jsonl"
  run_step "peer-$dev-check" "$T_PEER" all "$PEER_PY" pipeline/training/bench/peer_torch.py --check --device "$dev" \
    --threads "$threads"
  [ "$STEP_JSON" != - ] && cat "$STEP_JSON" >>"$WORK/peer.jsonl"
  for c in $PEER_CROPS; do
    run_step "peer-$dev-$c" "$T_PEER" all "$PEER_PY" pipeline/training/bench/peer_torch.py --device "$dev" --crop "$c" \
      --threads "$threads"
    [ "$STEP_JSON" != - ] && cat "$STEP_JSON" >>"$WORK/peer.jsonl"
  done
  [ -s "$WORK/peer.jsonl" ] && out_copy "$WORK/peer.jsonl" "peer-$dev.jsonl"
fi

for c in $FULL_CROPS; do
  bench "bench-$BACKEND-$c-full" "$T_FULL" --crop "$c" --steps 1 --case-sizes "$FULL_CASE" --no-peer
done

say "done in $(elapsed) s"
summarize
if [ -s "$WORK/summary.json" ] && [ -n "$PY" ]; then
  "$PY" - "$WORK/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("== steps")
for st in s["steps"]:
    print(f"  {st['name']:28} {st['status']:8} {st['seconds'] if st['seconds'] is not None else '-':>7} s  {st['note'] or ''}")
print("== highlights")
for h in s["highlights"]:
    print("  " + json.dumps(h))
EOF
fi
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
