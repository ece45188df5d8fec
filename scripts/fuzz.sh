#!/usr/bin/env bash
# Fuzz the grub editor (fuzz/fuzz_targets/grub.rs) for a bounded time with cargo-fuzz.
#
#   bash scripts/fuzz.sh                    # 60 s
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh   # longer
#   FUZZ_SANITIZER=none bash scripts/fuzz.sh   # where the ASan runtime is missing
#   FUZZ_SEED=1 FUZZ_RUNS=400000 bash scripts/fuzz.sh   # reproducible: same inputs every run
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only flags (-Zsanitizer, …),
# which RUSTC_BOOTSTRAP=1 lets stable rustc accept. cargo-fuzz is installed with
# `cargo install --locked` when missing. The corpus (fuzz/corpus/grub, not committed) is
# seeded from the Debian 12 fixture and a file with gpt's markers, and kept between runs.
# Prints `fuzz: grub N runs in S s, 0 crashes` last. When the fuzzer finds a crash (a panic,
# a broken law, a timeout of 10 s, running out of memory) it prints where the input was saved
# (fuzz/artifacts/grub/) and how to replay it, and exits non-zero; so does a failed build.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_MAX=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
# A fixed seed and a number of runs (instead of a time) make the run the same on every machine,
# so a red CI is caused by the change it ran on; without them each run searches afresh.
limit=(-max_total_time="$SECONDS_MAX")
[ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
[ -n "${FUZZ_SEED:-}" ] && limit+=(-seed="$FUZZ_SEED")

if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# --- seed corpus ----------------------------------------------------------------------------
# An input is two control bytes (variable and tokens, see the target) and the file.
corpus=fuzz/corpus/grub
mkdir -p "$corpus"
fixture=tests/support/fixtures/grub.debian12
seed() { # NAME CONTROL-BYTES (printf escapes) FILE-TEXT-FROM-STDIN
  # shellcheck disable=SC2059 # the control bytes are printf escapes on purpose
  { printf "$2"; cat; } >"$corpus/seed-$1"
}
seed debian12-default '\016\022' <"$fixture"
seed debian12-linux '\377\377' <"$fixture"
seed debian12-none '\000\000' <"$fixture"
seed markers '\014\340' <<'EOF'
GRUB_TIMEOUT=5
# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt vfio-pci.ids=10de:1f08,10de:10f9 (gpt reset removes them)
GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt vfio-pci.ids=10de:1f08,10de:10f9"
# gpt: added to GRUB_CMDLINE_LINUX and quoted it: iommu=pt (gpt reset removes them and the quotes)
GRUB_CMDLINE_LINUX="splash iommu=pt"
EOF
printf '\017\003# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\r\nGRUB_CMDLINE_LINUX="quiet"' \
  >"$corpus/seed-created-crlf"
# Found by the fuzzer: gpt's created line with its quotes taken off and another value.
printf '\017\003# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\r\nGRUB_CMDLINE_LINUX=export ' \
  >"$corpus/seed-created-unquoted"

# Every input that once broke a law (fuzz/regressions/grub, committed) is run first.
cp fuzz/regressions/grub/* "$corpus/"

# --- run ------------------------------------------------------------------------------------
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== fuzzing grub: ${limit[*]} (sanitizer: $SANITIZER)" >&2
status=0
# cargo-fuzz has no --locked: check fuzz/Cargo.lock first, so the build below cannot change it.
cargo fetch --locked --manifest-path fuzz/Cargo.toml
# cargo-fuzz's default build: optimized, with debug assertions and overflow checks.
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" grub "$corpus" -- \
  "${limit[@]}" -dict=fuzz/grub.dict -timeout=10 -print_final_stats=1 \
  2>&1 | tee "$log" >&2 || status=$?

done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
if [ "$status" = 0 ] && [ -n "$done_line" ]; then
  runs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/' <<<"$done_line")
  secs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/' <<<"$done_line")
  echo "fuzz: grub $runs runs in $secs s, 0 crashes"
  exit 0
fi
runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //' || true)
if [ -n "$artifact" ]; then
  echo "fuzz: grub found a crash after ${runs:-a few} runs: $artifact (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz grub $artifact)"
else
  echo "fuzz: grub did not run to the end (exit $status); see the output above"
fi
exit 1
