#!/usr/bin/env bash
# The real-boot end-to-end test of gpt: boots a Debian guest under QEMU (TCG, virtual Intel IOMMU,
# a fake multifunction GPU) several times and checks that `gpt full` hands the GPU to vfio-pci on
# the next boot and that `gpt reset` gives it back with /etc byte-identical. See README.md here.
#
#   bash tests/vm/run.sh [--scenario NAME]... [--suite bookworm] [--jobs N]
#
# Environment: GPT_BIN (default target/release/gpt, built if missing), GPT_DEB (the package the main
# scenario installs; default: built from GPT_BIN by scripts/deb.sh), GPT_VM_MIRROR (default: the
# first Debian mirror in this machine's apt sources on a Debian machine, debootstrap's own default
# elsewhere), GPT_VM_SCENARIOS (the scenarios run when no --scenario is given, space-separated;
# default: the default set below), GPT_VM_CACHE (the image cache, /var/cache/gpt-vm),
# GPT_VM_BOOT_TIMEOUT (seconds per boot, 900), GPT_VM_SMP (guest CPUs, 2),
# GPT_VM_KEEP=1 keeps each run's disk under target/vm-run/.
#
# Output: one `ok - …` / `not ok - …` line per assertion, then `N passed, M failed`; exit 1 when
# anything failed. Serial logs: target/vm-logs/SCENARIO/{console,stage}-bootN.log.

# The whole script is one compound command, read before it runs: editing it during a run (which
# takes minutes) cannot change what the running copy does.
{
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
all_scenarios=(main twin dracut dracut-testing twin-dracut sdboot sdboot-dracut single-gpu)
# Run when neither --scenario nor GPT_VM_SCENARIOS says otherwise (see README.md: time budget).
# Longest first: with two at a time, dracut and sdboot-dracut start together, then sdboot, main,
# twin and the short single-gpu (one boot, about 2 minutes) take whichever slot frees first.
default_scenarios=(dracut sdboot-dracut sdboot main twin single-gpu)

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "Scenarios: ${all_scenarios[*]} (default: ${default_scenarios[*]})"
}

suite=bookworm
scenarios=()
jobs=${GPT_VM_JOBS:-}
while [ $# -gt 0 ]; do
    case $1 in
    --scenario) scenarios+=("${2:?--scenario needs a name}"); shift 2 ;;
    --scenario=*) scenarios+=("${1#*=}"); shift ;;
    --suite) suite=${2:?--suite needs a name}; shift 2 ;;
    --suite=*) suite=${1#*=}; shift ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --jobs=*) jobs=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if [ ${#scenarios[@]} -eq 0 ]; then
    if [ -n "${GPT_VM_SCENARIOS:-}" ]; then
        read -r -a scenarios <<<"${GPT_VM_SCENARIOS//,/ }"
    else
        scenarios=("${default_scenarios[@]}")
    fi
fi
for s in "${scenarios[@]}"; do
    case " ${all_scenarios[*]} " in *" $s "*) ;; *) echo "run.sh: no scenario '$s' (have: ${all_scenarios[*]})" >&2; exit 2 ;; esac
done
# Under TCG a guest is mostly one busy thread (update-initramfs is a long chain of forks), so two
# scenarios side by side on two cores take little longer than one.
[ -n "$jobs" ] || jobs=$(($(nproc) >= 2 ? 2 : 1))

note() { printf '# %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "needs root (debootstrap, debugfs on the image); no sudo here"
    args=(--suite "$suite" --jobs "$jobs")
    for s in "${scenarios[@]}"; do args+=(--scenario "$s"); done
    exec sudo --preserve-env=GPT_BIN,GPT_DEB,GPT_VM_MIRROR,GPT_VM_BOOT_TIMEOUT,GPT_VM_SMP,GPT_VM_KEEP,GPT_VM_JOBS,GPT_VM_SCENARIOS,GPT_VM_CACHE,CARGO_TARGET_DIR \
        bash "${BASH_SOURCE[0]}" "${args[@]}"
fi

# --- tools ----------------------------------------------------------------------------------------
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
missing=()
need() { # need PACKAGE TEST...: install PACKAGE when the test fails
    local pkg=$1
    shift
    "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
need qemu-system-x86 command -v qemu-system-x86_64
need ovmf test -r "$ovmf_code" -a -r "$ovmf_vars"
need debootstrap command -v debootstrap
need debian-archive-keyring test -r /usr/share/keyrings/debian-archive-keyring.gpg
need grub-common command -v grub-mkstandalone
need mtools command -v mcopy
need dosfstools command -v mkfs.vfat
need fdisk command -v sfdisk
need e2fsprogs command -v debugfs
need seabios test -r /usr/share/seabios/vgabios-stdvga.bin
if [ ${#missing[@]} -gt 0 ]; then
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- the gpt under test ---------------------------------------------------------------------------
if [ -z "${GPT_BIN:-}" ]; then
    GPT_BIN=$target/release/gpt
    if [ ! -x "$GPT_BIN" ]; then
        note "building gpt (cargo build --release)"
        (cd "$repo" && cargo build --release --quiet) >&2
    fi
fi
[ -x "$GPT_BIN" ] || die "GPT_BIN=$GPT_BIN is not an executable"
GPT_BIN=$(readlink -f "$GPT_BIN")

# --- the package under test: the main scenario installs gpt from it with dpkg -i -----------------
if [[ " ${scenarios[*]} " == *" main "* ]]; then
    if [ -z "${GPT_DEB:-}" ]; then
        note "building the .deb (scripts/deb.sh)"
        GPT_DEB=$(cd "$repo" && GPT_BIN=$GPT_BIN bash scripts/deb.sh | tail -n 1) || die "scripts/deb.sh failed; or set GPT_DEB"
    fi
    [ -f "$GPT_DEB" ] || die "GPT_DEB=$GPT_DEB is not a file"
    GPT_DEB=$(readlink -f "$GPT_DEB")
    # The package must hold the binary under test, or main would test another gpt. cargo-deb
    # strips it, so the bytes differ: compare the linker's build id, which strip keeps.
    build_id() { readelf -n "$1" 2>/dev/null | sed -n 's/^ *Build ID: //p'; }
    dpkg-deb --fsys-tarfile "$GPT_DEB" | tar -xOf - ./usr/bin/gpt >"$target/vm-deb-gpt" ||
        die "$GPT_DEB has no usr/bin/gpt"
    id_bin=$(build_id "$GPT_BIN")
    id_deb=$(build_id "$target/vm-deb-gpt")
    rm -f "$target/vm-deb-gpt"
    [ -n "$id_bin" ] || die "$GPT_BIN has no build id (readelf -n): cannot tell whether $GPT_DEB holds it"
    [ "$id_bin" = "$id_deb" ] ||
        die "$GPT_DEB does not hold $GPT_BIN as usr/bin/gpt (build id ${id_deb:-none}, not $id_bin); rebuild it (scripts/deb.sh) or set GPT_DEB"
fi

# --- the cached image -------------------------------------------------------------------------------
# The mirror: the first non-security URI in this machine's apt sources, unless GPT_VM_MIRROR says.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             { uris = ""; suites = ""; types = ""; off = 0
               for (i = 1; i <= NF; i++) {
                 if ($i ~ /^[ \t]*#/) continue
                 if ($i ~ /^URIs:/)    { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                 if ($i ~ /^Suites:/)  { suites = $i }
                 if ($i ~ /^Types:/)   { types = $i }
                 if ($i ~ /^Enabled:[ \t]*no/) off = 1 }
               if (!off && types ~ /(^|[ \t:])deb([ \t]|$)/ && suites !~ /-security/ && uris != "") {
                 split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" && $0 !~ /-security/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ ) { print $i; exit } }' "$f"
    done
}
# On another distribution (Ubuntu CI runners) its mirrors carry no Debian suite: leave the choice
# to debootstrap's script for the suite.
host_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}")
if [ -n "${GPT_VM_MIRROR:-}" ]; then
    mirror=$GPT_VM_MIRROR
elif [ "$host_id" = debian ]; then
    mirror=$(find_mirror | head -n 1)
    [ -n "$mirror" ] || die "no Debian mirror in /etc/apt sources; set GPT_VM_MIRROR"
else
    mirror=
fi

# Each scenario boots an image of a Debian suite with a boot stack (image.sh's variant):
#   main, twin       --suite (bookworm), initramfs-tools
#   dracut           trixie (Debian 13: dracut 106, no update-initramfs of its own), dracut only
#   dracut-testing   testing (dracut >= 107 with its update-initramfs), initramfs-tools-core kept
#   twin-dracut      trixie's dracut image with twin's two identical GPUs (gpt's pre-udev hook)
#   sdboot           trixie, systemd-boot (kernel-install, BLS entries on the ESP), no GRUB
#   sdboot-dracut    trixie, systemd-boot with dracut 106 (no update-initramfs) as the generator
#   single-gpu       trixie with libvirt: the fake GPU is the guest's only display (single-GPU mode)
image_of() {
    case $1 in
    dracut | twin-dracut) echo trixie dracut ;;
    dracut-testing) echo testing dracut-itc ;;
    sdboot) echo trixie sdboot ;;
    sdboot-dracut) echo trixie sdboot-dracut ;;
    single-gpu) echo trixie libvirt ;;
    *) echo "$suite" initramfs-tools ;;
    esac
}

# The cache lives outside the clone (CI runs on a fresh clone of the same machine), one folder per
# image, keyed on what goes into it: the builder, the guest units, the suite and the variant. Not
# on gpt, not on stage.sh (both are written into each run's copy). A moving suite (testing) keeps
# its image until one of those inputs changes; delete the folder to take a newer snapshot.
cache=${GPT_VM_CACHE:-/var/cache/gpt-vm}
mkdir -p "$cache" "$target/vm-logs" "$target/vm-run"
image_key() { # image_key SUITE VARIANT
    { cat "$here/image.sh" "$here"/guest/*; echo "$1 $2"; } | sha256sum | cut -c1-16
}
# ensure_image SUITE VARIANT: builds the image unless cached (one builder per image at a time;
# different images build side by side), then prints its folder.
ensure_image() {
    local suite=$1 variant=$2 key dir t0=$SECONDS
    key=$(image_key "$suite" "$variant")
    dir=$cache/$suite-$variant-$key
    (
        flock 9
        if [ ! -f "$dir/disk.img" ]; then
            note "building the $suite $variant image (cache key $key) from ${mirror:-the default mirror of debootstrap}"
            # Older images of this suite and variant are of no further use.
            # (Exactly SUITE-VARIANT-KEY: trixie-sdboot-* would also match trixie-sdboot-dracut-KEY.)
            find "$cache" -maxdepth 1 -regextype posix-extended -regex ".*/$suite-$variant-[0-9a-f]{16}" \
                ! -name "$suite-$variant-$key" -exec rm -rf {} +
            # (set -e does not reach into this subshell: it runs on the left of ||)
            bash "$here/image.sh" "$suite" "$mirror" "$dir" "$variant" >&2 || exit 1
            note "image $suite $variant built in $((SECONDS - t0)) s"
        fi
    ) 9>"$cache/.lock-$suite-$variant" || return 1
    echo "$dir"
}

# --- one scenario -------------------------------------------------------------------------------------
# The PCI layout of a scenario. The host keeps its own display on pcie.0 and that display must carry
# the firmware framebuffer: virtio-vga will not do, as OVMF's virtio-gpu GOP is BLT-only, so the
# kernel's EFI stub takes the std VGA's framebuffer, the target becomes the boot VGA, and Debian 12's
# 6.1 kernel oopses (use-after-free in sysfb_disable) when vfio-pci has evicted that framebuffer and
# virtio_gpu probes later. cirrus-vga gets a linear-framebuffer GOP and stays the boot VGA.
# single-gpu has no cirrus: the fake GPU is the guest's only display, its boot VGA with fbcon on it.
qemu_devices() {
    if [ "$1" = single-gpu ]; then echo -vga none; else echo -vga none -device cirrus-vga,bus=pcie.0; fi
    echo -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=1c.0
    echo -device VGA,bus=rp1,addr=00.0,multifunction=on -device ich9-intel-hda,bus=rp1,addr=00.1
    if [ "$1" = twin ] || [ "$1" = twin-dracut ]; then
        echo -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,addr=1d.0
        echo -device VGA,bus=rp2,addr=00.0
    fi
}

# prepare SCENARIO DIR IMAGE: a copy of IMAGE with gpt, the stage script and the scenario name in it.
# main gets gpt's .deb as /usr/local/lib/gpt-test/gpt.deb (its stage installs it); the others
# get the binary as /usr/local/bin/gpt.
prepare() {
    local s=$1 dir=$2 image=$3 off
    off=$(cat "$image/root.offset")
    rm -rf "$dir"
    mkdir -p "$dir"
    cp --sparse=always "$image/disk.img" "$dir/disk.img"
    cp "$ovmf_vars" "$dir/vars.fd"
    echo "$s" >"$dir/scenario"
    local fs="$dir/disk.img?offset=$off" src=$GPT_BIN dst=/usr/local/bin/gpt mode=0100755
    if [ "$s" = main ]; then src=$GPT_DEB dst=/usr/local/lib/gpt-test/gpt.deb mode=0100644; fi
    debugfs -w -f - "$fs" >"$dir/debugfs.log" 2>&1 <<EOF
write $src $dst
set_inode_field $dst mode $mode
set_inode_field $dst uid 0
set_inode_field $dst gid 0
write $here/stage.sh /usr/local/lib/gpt-test/stage
set_inode_field /usr/local/lib/gpt-test/stage mode 0100755
write $dir/scenario /usr/local/lib/gpt-test/scenario
EOF
    # debugfs exits 0 whatever happened: read the files back.
    debugfs -R "dump $dst $dir/gpt.check" "$fs" >/dev/null 2>&1
    debugfs -R "dump /usr/local/lib/gpt-test/stage $dir/stage.check" "$fs" >/dev/null 2>&1
    cmp -s "$src" "$dir/gpt.check" && cmp -s "$here/stage.sh" "$dir/stage.check" || {
        cat "$dir/debugfs.log" >&2
        return 1
    }
    rm -f "$dir/gpt.check" "$dir/stage.check"
    [ "$s" = main ] || return 0
    # main reads the fake GPU's ROM with `gpt rom` and compares it with the file QEMU gave it.
    local vgabios
    vgabios=$(qemu_vgabios) || { echo "run.sh: QEMU has no vgabios-stdvga.bin (qemu-system-x86_64 -L help)" >&2; return 1; }
    debugfs -w -R "write $vgabios /usr/local/lib/gpt-test/vgabios-stdvga.bin" "$fs" >>"$dir/debugfs.log" 2>&1
    debugfs -R "dump /usr/local/lib/gpt-test/vgabios-stdvga.bin $dir/vgabios.check" "$fs" >/dev/null 2>&1
    cmp -s "$vgabios" "$dir/vgabios.check" || { cat "$dir/debugfs.log" >&2; return 1; }
    rm -f "$dir/vgabios.check"
}
# qemu_vgabios: the std VGA's ROM as QEMU loads it (the first vgabios-stdvga.bin on its firmware path).
qemu_vgabios() {
    local d
    for d in $(qemu-system-x86_64 -L help); do
        [ -r "$d/vgabios-stdvga.bin" ] && { readlink -f "$d/vgabios-stdvga.bin"; return 0; }
    done
    return 1
}

# scenario NAME: boots until the guest says the scenario is complete; writes its assertion lines to
# $logs/results and its timings to $logs/timings.
scenario() {
    local s=$1 dir=$target/vm-run/$1 logs=$target/vm-logs/$1
    local timeout=${GPT_VM_BOOT_TIMEOUT:-900} boot rc t0 secs image
    rm -rf "$logs"
    mkdir -p "$logs"
    : >"$logs/results"
    result() { echo "$1 - $s: $2" >>"$logs/results"; }
    t0=$SECONDS
    # shellcheck disable=SC2046
    if ! image=$(ensure_image $(image_of "$s")); then
        result "not ok" "the $(image_of "$s") image builds (see the output above)"
        return
    fi
    echo "image $(basename "$image"): $((SECONDS - t0)) s" >>"$logs/timings"
    if ! prepare "$s" "$dir" "$image"; then
        result "not ok" "gpt and the stage script written into the image"
        return
    fi
    local t_scenario=$SECONDS
    for boot in 1 2 3 4 5 6; do
        t0=$SECONDS
        local attempt
        for attempt in 1 2; do
            rc=0
            # shellcheck disable=SC2046
            timeout -k 10 "$timeout" qemu-system-x86_64 \
                -machine q35,accel=tcg,kernel-irqchip=split -m 2G -smp "${GPT_VM_SMP:-2}" \
                -device intel-iommu,intremap=on \
                -drive if=pflash,format=raw,readonly=on,file="$ovmf_code" \
                -drive if=pflash,format=raw,file="$dir/vars.fd" \
                -drive if=virtio,format=raw,file="$dir/disk.img" \
                -nodefaults -display none -monitor none -no-reboot \
                -serial file:"$logs/console-boot$boot.log" -serial file:"$logs/stage-boot$boot.log" \
                $(qemu_devices "$s") \
                </dev/null >"$logs/qemu-boot$boot.log" 2>&1 &
            local qpid=$! panicked=no
            # A guest kernel that panics stays up until the timeout: stop it as soon as it says so.
            while kill -0 "$qpid" 2>/dev/null; do
                if grep -qa -- '---\[ end Kernel panic' "$logs/console-boot$boot.log" 2>/dev/null; then
                    panicked=yes
                    sleep 2
                    kill "$qpid" 2>/dev/null
                    break
                fi
                sleep 3
            done
            wait "$qpid" || rc=$?
            [ "$panicked" = yes ] || break
            # Under TCG on a loaded machine the guest kernel can die before anything of the test
            # ran (seen: the IO-APIC timer test; an int3 oops in text patching with 2 vCPUs).
            # Such a boot changed nothing on the disk (the stage never started): boot again, once,
            # and say so. A panic after the stage started, or a second one, is a failure.
            if [ "$attempt" = 1 ] && ! grep -qa '^=== gpt-vm: scenario' "$logs/stage-boot$boot.log"; then
                mv "$logs/console-boot$boot.log" "$logs/console-boot$boot-panic.log"
                echo "boot $boot: the guest kernel panicked before the stage ran (see console-boot$boot-panic.log); booting again" >>"$logs/timings"
                continue
            fi
            rc=panic
            break
        done
        secs=$((SECONDS - t0))
        echo "boot $boot: $secs s (qemu exit $rc)" >>"$logs/timings"
        tr -d '\r' <"$logs/stage-boot$boot.log" >"$logs/stage-boot$boot.txt"
        grep -E '^(not )?ok - ' "$logs/stage-boot$boot.txt" | sed "s/^\(\(not \)\?ok\) - /\1 - $s: /" >>"$logs/results" || true
        grep '^# ' "$logs/stage-boot$boot.txt" | sed "s/^# /boot $boot: /" >>"$logs/timings" || true
        if [ "$rc" = panic ]; then
            result "not ok" "boot $boot: the guest kernel does not panic (see $logs/console-boot$boot.log)"
            break
        elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            result "not ok" "boot $boot powers off within $timeout s (killed; see $logs/console-boot$boot.log)"
            break
        elif [ "$rc" != 0 ]; then
            result "not ok" "boot $boot: qemu exits 0 (exit $rc: $(head -c 300 "$logs/qemu-boot$boot.log" | tr '\n' ' '))"
            break
        fi
        if ! grep -q "^=== gpt-vm: end of boot $boot\$" "$logs/stage-boot$boot.txt"; then
            result "not ok" "boot $boot: the stage ran to its end (see $logs/stage-boot$boot.txt, console-boot$boot.log)"
            break
        fi
        grep '^Bail out!' "$logs/stage-boot$boot.txt" | sed "s/^Bail out! /not ok - $s: stopped: /" >>"$logs/results" || true
        grep -q '^=== gpt-vm: scenario complete$' "$logs/stage-boot$boot.txt" && break
        [ "$boot" = 6 ] && result "not ok" "the scenario completes within 6 boots"
    done
    echo "total: $((SECONDS - t_scenario)) s" >>"$logs/timings"
    [ "${GPT_VM_KEEP:-0}" = 1 ] || rm -rf "$dir"
}

# gpt never runs on this machine (scripts/deb.sh only has it print its manual pages and completions):
# it runs inside the guests.
note "gpt under test: $GPT_BIN (sha256 $(sha256sum "$GPT_BIN" | cut -c1-16))${GPT_DEB:+; main installs $GPT_DEB}"
note "scenarios: ${scenarios[*]} (main/twin suite $suite, $jobs at a time, boot timeout ${GPT_VM_BOOT_TIMEOUT:-900} s, images in $cache)"
t_all=$SECONDS
pids=()
running=0
for s in "${scenarios[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    scenario "$s" &
    pids+=($!)
    running=$((running + 1))
done
wait "${pids[@]}" || true

passed=0
failed=0
for s in "${scenarios[@]}"; do
    logs=$target/vm-logs/$s
    [ -s "$logs/results" ] || echo "not ok - $s: produced no result (see $logs/)" >"$logs/results"
    cat "$logs/results"
    passed=$((passed + $(grep -c '^ok - ' "$logs/results" || true)))
    failed=$((failed + $(grep -c '^not ok - ' "$logs/results" || true)))
    sed "s/^/$s /" "$logs/timings" 2>/dev/null | sed 's/^/# /' >&2 || true
done
note "all scenarios (images included): $((SECONDS - t_all)) s; logs in $target/vm-logs/"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
exit
}
