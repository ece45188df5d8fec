#!/usr/bin/env bash
# Benchmark gpt on synthetic hosts: `gpt iommu` against `lspci -nn` and against the old
# setup.sh's way (one `lspci -nns ADDR` per device of every group), peak memory, and `gpt full`
# on an already-configured host and on a fresh one.
#
#   bash scripts/bench.sh                       # N = 64 256 4096
#   BENCH_SIZES="64 256" BENCH_RUNS=10 bash scripts/bench.sh
#   BENCH_GPT=/path/to/gpt bash scripts/bench.sh   # measure another build (before/after)
#
# It prints a Markdown table and PASS/MISS per target. It never fails on a figure -- these
# machines are noisy, so medians and ratios are taken in one run and only reported -- but it
# does fail when it cannot measure (a tool missing and not installable, a build error).
# Missing tools (hyperfine, lspci, /usr/bin/time, strace) are installed from the distribution's
# packages: `apt-get update` once, then `apt-get install -y`.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${BENCH_SIZES:-"64 256 4096"}
RUNS=${BENCH_RUNS:-20}          # hyperfine runs for gpt and lspci
OLD_RUNS=${BENCH_OLD_RUNS:-3}   # the old loop is slow: fewer runs
OLD_MAX=256                     # the old loop runs at N <= this
FAKE_SLEEP=${BENCH_FAKE_SLEEP:-0.5}
FRESH_RUNS=${BENCH_FRESH_RUNS:-5}   # gpt full on a fresh host (each about 4 x FAKE_SLEEP)

# --- tools -----------------------------------------------------------------------------------
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v lspci >/dev/null || need+=(pciutils)
[ -x /usr/bin/time ] || need+=(time)
command -v strace >/dev/null || need+=(strace)
command -v cc >/dev/null || need+=(gcc)
if ((${#need[@]})); then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "== installing ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- build -----------------------------------------------------------------------------------
echo "== building gpt (release), the tree generator and the floor program" >&2
cargo build --release --locked -q
cargo build --example gen_tree --locked -q
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
GPT=${BENCH_GPT:-$target/release/gpt}
GEN=$target/debug/examples/gen_tree

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpt-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The floor: gpt iommu's system calls alone, in C (see the file's head).
FLOOR=$WORK/bench-floor
cc -O2 -Wall -pthread scripts/bench-floor.c -o "$FLOOR"
# As users run it: no colours, the tree's own pci.ids, and no backtrace capture (with
# RUST_BACKTRACE set, every anyhow error created along the way walks the stack).
export NO_COLOR=1
unset GPT_PCI_IDS RUST_BACKTRACE RUST_LIB_BACKTRACE

ids=/usr/share/misc/pci.ids
[ -f "$ids" ] || ids=/usr/share/hwdata/pci.ids
ids_arg=()
[ -f "$ids" ] && ids_arg=(--pci-ids "$ids")

# The old setup.sh's listing: every group, one lspci per device.
cat > "$WORK/oldloop.sh" <<'EOF'
T=$1
shopt -s nullglob
for g in $(find "$T/sys/kernel/iommu_groups/" -mindepth 1 -maxdepth 1 -type d | sort -V); do
  for d in "$g"/devices/*; do
    echo "IOMMU Group ${g##*/} $(lspci -A linux-sysfs -O sysfs.path="$T/sys/bus/pci" -nns "${d##*/}")"
  done
done
EOF

# hyperfine CSV columns: command,mean,stddev,median,user,system,min,max (seconds).
# field FILE NAME COLUMN -> the value in milliseconds
field() {
  awk -F, -v name="$2" -v col="$3" '
    NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
    $1 == name { printf "%.2f", $(idx[col]) * 1000 }' "$1"
}
ms() { awk -v v="$1" 'BEGIN { if (v >= 100) printf "%.0f ms", v; else printf "%.1f ms", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

load() { cut -d' ' -f1-3 /proc/loadavg; }
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
load_start=$(load)

# --- gpt iommu, lspci, the old loop ------------------------------------------------------------
rows=()
declare -A gpt_med lspci_med old_med floor_med
largest=0
for n in $SIZES; do
  tree=$WORK/t$n
  echo "== N=$n: generating the tree" >&2
  "$GEN" "$tree" "$n" "${ids_arg[@]}" >/dev/null
  listed=$("$GPT" --root "$tree" iommu | grep -c '^      driver: ' || true)
  seen=$(lspci -A linux-sysfs -O "sysfs.path=$tree/sys/bus/pci" -nn | wc -l)
  floor_seen=$("$FLOOR" "$tree" "$tree/usr/share/misc/pci.ids" 3)   # fails if any open fails
  if [ "$listed" != "$n" ] || [ "$seen" != "$n" ] || [ "${floor_seen%% *}" != "$n" ]; then
    echo "warning: N=$n but gpt listed $listed devices, lspci $seen and the floor ${floor_seen%% *}" >&2
  fi
  echo "== N=$n: gpt iommu, lspci -nn and the floor, $RUNS runs each" >&2
  hyperfine -N --warmup 3 --runs "$RUNS" --style none --export-csv "$WORK/h$n.csv" \
    -n gpt "$GPT --root $tree iommu" \
    -n lspci "lspci -A linux-sysfs -O sysfs.path=$tree/sys/bus/pci -nn" \
    -n floor "$FLOOR $tree $tree/usr/share/misc/pci.ids 3" >/dev/null
  g=$(field "$WORK/h$n.csv" gpt median)
  l=$(field "$WORK/h$n.csv" lspci median)
  f=$(field "$WORK/h$n.csv" floor median)
  floor_med[$n]=$f
  gc=$(awk -v u="$(field "$WORK/h$n.csv" gpt user)" -v s="$(field "$WORK/h$n.csv" gpt system)" 'BEGIN { print u + s }')
  lc=$(awk -v u="$(field "$WORK/h$n.csv" lspci user)" -v s="$(field "$WORK/h$n.csv" lspci system)" 'BEGIN { print u + s }')
  gpt_med[$n]=$g
  lspci_med[$n]=$l
  old="-" old_ratio="-" floor_ratio="-"
  if [ "$n" -le "$OLD_MAX" ]; then
    echo "== N=$n: the old loop, $OLD_RUNS runs" >&2
    hyperfine -N --warmup 1 --runs "$OLD_RUNS" --style none --export-csv "$WORK/o$n.csv" \
      -n old "bash $WORK/oldloop.sh $tree" >/dev/null
    o=$(field "$WORK/o$n.csv" old median)
    old_med[$n]=$o
    old=$(ms "$o")
    old_ratio="$(awk -v a="$o" -v b="$g" 'BEGIN { printf "%.0f", a / b }')×"
    floor_ratio="$(awk -v a="$o" -v b="$f" 'BEGIN { printf "%.0f", a / b }')×"
  fi
  rows+=("| $n | $(ms "$g") | $(ms "$l") | $(ratio "$g" "$l") | $(ms "$gc") | $(ms "$lc") | $(ratio "$gc" "$lc") | $old | $old_ratio | $(ms "$f") | $floor_ratio |")
  [ "$n" -gt "$largest" ] && largest=$n
done

# --- peak memory ---------------------------------------------------------------------------------
rss=0
for _ in 1 2 3 4 5; do
  r=$( { /usr/bin/time -f '%M' "$GPT" --root "$WORK/t$largest" iommu >/dev/null; } 2>&1 | tail -1)
  [ "$r" -gt "$rss" ] && rss=$r
done

# --- gpt full ----------------------------------------------------------------------------------
# Fake update commands on PATH: each sleeps, does the least the real one does for gpt's checks
# to pass, and logs `name start end` (used to count the commands). Under --root, gpt runs them
# through `chroot ROOT cmd`, a fake chroot that execs the fake command.
make_fakes() {
  local bin=$1 log=$2
  mkdir -p "$bin"
  cat > "$bin/fake-common" <<EOF
fake_log=$log
fake_sleep=$FAKE_SLEEP
EOF
  cat >> "$bin/fake-common" <<'EOF'
LC_ALL=C
fake_start=${FAKE_T0:-$EPOCHREALTIME}
fake_end() { echo "${0##*/} $fake_start $EPOCHREALTIME" >> "$fake_log"; }
trap fake_end EXIT
root=${FAKE_ROOT:-/nonexistent}
EOF
  cat > "$bin/chroot" <<'EOF'
#!/usr/bin/env bash
# chroot ROOT CMD ARGS...: run the fake CMD with FAKE_ROOT=ROOT (nothing touches the real /).
LC_ALL=C FAKE_T0=$EPOCHREALTIME FAKE_ROOT=$1 exec "$(dirname "$0")/$2" "${@:3}"
EOF
  cat > "$bin/update-grub" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"; sleep "$fake_sleep"
( . "$root/etc/default/grub"
  mkdir -p "$root/boot/grub"
  for k in "$root"/boot/vmlinuz-*; do
    echo "linux /boot/${k##*/} root=/dev/sda1 ro $GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"
  done > "$root/boot/grub/grub.cfg" )
EOF
  cat > "$bin/update-initramfs" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"; sleep "$fake_sleep"
for k in "$root"/lib/modules/*; do echo fake > "$root/boot/initrd.img-${k##*/}"; done
EOF
  cat > "$bin/depmod" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"; sleep "$fake_sleep"
EOF
  cat > "$bin/lsinitramfs" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"; sleep "$fake_sleep"
k=${1##*initrd.img-}
echo "usr/lib/modules/$k/kernel/drivers/vfio/pci/vfio-pci.ko"
echo "etc/modprobe.d/gpt-vfio.conf"
EOF
  cat > "$bin/dpkg-query" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"
# Every package asked about is installed.
for p in "$@"; do case $p in -*) ;; *) echo "install ok installed"; esac; done
EOF
  cat > "$bin/apt-get" <<'EOF'
#!/usr/bin/env bash
. "$(dirname "$0")/fake-common"; sleep "$fake_sleep"
EOF
  chmod +x "$bin"/*
}

full_noop="n/a (gpt full not built yet)" full_noop_verdict="n/a" full_noop_children="n/a"
full_fresh="n/a (gpt full not built yet)" full_fresh_verdict="n/a"
example=examples/hosts/rocketlake-rtx2060
probe=$("$GPT" --root "$example" full nvidia --dry-run 2>&1 || true)
if [[ $probe != *"not built yet"* ]]; then
  echo "== gpt full: a fresh host, with update commands that sleep $FAKE_SLEEP s" >&2
  bin=$WORK/fakebin
  make_fakes "$bin" "$WORK/calls.log"
  # Timed from gpt's side: strace (with a seccomp filter, so only process calls stop) stamps
  # gpt's start and exit and each child's fork and exit; external = the children's lifetimes,
  # from the fork to the exit of each process gpt starts, own = the rest. FRESH_RUNS runs, each
  # on a fresh copy of the host; the run with the median own time is reported.
  results=() code=0 repeated=""
  # The trees generated above are still being written back: without this, gpt's fsyncs would
  # wait for the benchmark's own files.
  sync
  for i in $(seq "$FRESH_RUNS"); do
    host=$WORK/full-host
    rm -rf "$host"
    cp -a "$example" "$host"
    # The example host carries only the files gpt reads; every real host also has /run and
    # /var/lib, which gpt would otherwise create (and sync) as part of its own time.
    mkdir -p "$host/run" "$host/var/lib"
    : > "$WORK/calls.log"
    set +e
    PATH=$bin:$PATH strace -f --seccomp-bpf -q -ttt -e trace=execve,fork,vfork,clone,clone3 \
      -e signal=none -o "$WORK/full.strace" \
      "$GPT" --root "$host" full nvidia --yes >"$WORK/full.out" 2>"$WORK/full.err"
    c=$?
    set -e
    if [ "$c" != 0 ]; then
      code=$c
      sed 's/^/    /' "$WORK/full.err" | tail -5 >&2
    fi
    read -r total external < <(awk '
      NR == 1 { gpt = $1; t0 = $2 }
      $1 == gpt && $3 ~ /^(clone|clone3|fork|vfork)\(/ {
        pending = ($0 ~ /CLONE_THREAD/) ? "" : $2   # a thread of gpt is gpt, not a command
        if (pending != "" && $0 ~ /= [0-9]+$/) start[$NF] = pending; next }
      $1 == gpt && $0 ~ /(clone|clone3|fork|vfork) resumed>/ && $0 ~ /= [0-9]+$/ {
        if (pending != "") start[$NF] = pending; next }
      /[+][+][+] exited/ { if ($1 in start) ext += $2 - start[$1]; if ($1 == gpt) t1 = $2 }
      END { printf "%d %d\n", (t1 - t0) * 1000000, ext * 1000000 }' "$WORK/full.strace")   # µs
    calls=$(awk '{ print $1 }' "$WORK/calls.log" | sort | uniq -c | awk '{ printf "%s%s×%s", sep, $2, $1; sep = ", " }')
    repeated+=$(awk '{ print $1 }' "$WORK/calls.log" | sort | uniq -d | tr '\n' ' ')
    results+=("$(( total - external )) $total $external $calls")
  done
  read -r own total external calls < <(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (FRESH_RUNS + 1) / 2 ))p")
  all_own=$(printf '%s\n' "${results[@]}" | awk '{ printf "%s%.1f", sep, $1 / 1000; sep = " / " }')
  share=$(awk -v o="$own" -v t="$total" 'BEGIN { printf "%.2f", 100 * o / t }')
  full_fresh="exit $code; median of $FRESH_RUNS runs: total $(ms "$(awk -v t="$total" 'BEGIN { print t / 1000 }')"), external $(ms "$(awk -v t="$external" 'BEGIN { print t / 1000 }')"), own $(awk -v o="$own" 'BEGIN { printf "%.1f", o / 1000 }') ms = ${share}% (own in each run: $all_own ms); commands per run: $calls"
  if [ "$code" = 0 ] && [ -z "$repeated" ] && awk -v s="$share" 'BEGIN { exit !(s <= 1) }'; then
    full_fresh_verdict=PASS
  else
    full_fresh_verdict=MISS
  fi

  echo "== gpt full: the same host, already configured, $RUNS runs" >&2
  PATH=$bin:$PATH hyperfine -N --warmup 3 --runs "$RUNS" --style none --export-csv "$WORK/noop.csv" \
    -n noop "$GPT --root $host full nvidia --yes" >/dev/null
  noop=$(field "$WORK/noop.csv" noop median)
  # Child processes: every fork, vfork, clone and execve of the run (threads count too).
  PATH=$bin:$PATH strace -f -qq -c -o "$WORK/noop.strace" -e trace=execve,fork,vfork,clone,clone3 \
    "$GPT" --root "$host" full nvidia --yes >/dev/null 2>&1 || true
  children=$(awk '$NF ~ /^(fork|vfork|clone|clone3)$/ { n += $4 } END { print n + 0 }' "$WORK/noop.strace")
  execs=$(awk '$NF == "execve" { n += $4 } END { print n + 0 }' "$WORK/noop.strace")
  full_noop_children="$children (execve: $execs, gpt's own included)"
  full_noop="$(ms "$noop") median"
  if awk -v v="$noop" 'BEGIN { exit !(v <= 10) }' && [ "$children" = 0 ]; then
    full_noop_verdict=PASS
  else
    full_noop_verdict=MISS
  fi
fi

# --- report -----------------------------------------------------------------------------------
verdict() { if awk "BEGIN { exit !($1) }"; then printf '%-4s' PASS; else printf '%-4s' MISS; fi; }
echo
echo "gpt benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($cpu_model), Linux $(uname -r)"
echo "load average at start: $load_start; at the end: $(load)"
echo "wall-time medians of $RUNS runs (old loop: $OLD_RUNS) in one session; cpu = mean user + system time"
echo
echo "| N | gpt iommu | lspci -nn | ratio | gpt cpu | lspci cpu | cpu ratio | old loop | old/gpt | floor | old/floor |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "floor = scripts/bench-floor.c: gpt iommu's system calls alone (devices in two threads, groups"
echo "and pci.ids in a third), without parsing, names or output: no program that reads what gpt"
echo "reads, the way gpt reads it, is faster on this machine."
echo "peak RSS of gpt iommu at N=$largest: $rss KiB ($(awk -v r="$rss" 'BEGIN { printf "%.1f", r / 1024 }') MiB, max of 5 runs)"
echo "gpt full, already configured: $full_noop; child processes: $full_noop_children"
echo "gpt full, fresh host: $full_fresh"
echo
echo "targets:"
if [ -n "${gpt_med[4096]:-}" ]; then
  r=$(ratio "${gpt_med[4096]}" "${lspci_med[4096]}")
  echo "$(verdict "$r <= 0.5")  gpt iommu <= 0.5 x lspci -nn at 4096: $r"
else
  echo "n/a   gpt iommu <= 0.5 x lspci -nn at 4096 (N=4096 not run)"
fi
if [ -n "${old_med[256]:-}" ]; then
  r=$(awk -v a="${old_med[256]}" -v b="${gpt_med[256]}" 'BEGIN { printf "%.0f", a / b }')
  rf=$(awk -v a="${old_med[256]}" -v b="${floor_med[256]}" 'BEGIN { printf "%.0f", a / b }')
  echo "$(verdict "$r >= 1000")  old loop >= 1000 x gpt at 256: ${r}x (the floor's: ${rf}x)"
else
  echo "n/a   old loop >= 1000 x gpt at 256 (N=256 not run)"
fi
echo "$(verdict "$rss <= 8192")  peak RSS <= 8 MiB at N=$largest: $rss KiB"
printf '%-4s  %s\n' "$full_noop_verdict" "gpt full already configured: <= 10 ms median and no child process: $full_noop, $full_noop_children"
printf '%-4s  %s\n' "$full_fresh_verdict" "gpt full fresh host: own time <= 1% and each command once: $full_fresh"
