#!/bin/bash
# The VM test's guest side. run.sh writes this file into each run's copy of the image as
# /usr/local/lib/gpt-test/stage (next to /usr/local/bin/gpt, or gpt.deb for main, and the scenario name), and
# gpt-test.service runs it at the end of every boot with its output on the second serial port,
# then powers the guest off. Editing this file does not rebuild the cached image.
#
# Protocol with run.sh (one line each, on the serial port):
#   ok - <text> / not ok - <text>   one assertion
#   Bail out! <text>                 the scenario cannot go on
#   === gpt-vm: end of boot N        this boot's stage ran to its end
#   === gpt-vm: scenario complete    no further boot wanted
# Everything else (commands and their output, indented) is diagnosis for the log.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C NO_COLOR=1 TERM=dumb

lib=/usr/local/lib/gpt-test
state=/var/lib/gpt-test          # survives reboots; not /etc, not gpt's /var/lib/gpt
scenario=$(cat "$lib/scenario" 2>/dev/null || echo main)
boot=$(($(cat "$state/boot" 2>/dev/null || echo 0) + 1))
echo "$boot" >"$state/boot"
sync
W=$state/boot$boot               # this boot's command outputs, kept in the image
rm -rf "$W"
mkdir -p "$W"

# The fake GPU behind root port 1 (QEMU std VGA + HDA at functions 0 and 1) and, in the twin
# scenario, an identical VGA alone behind root port 2.
GPU=0000:01:00.0
AUDIO=0000:01:00.1
TWIN=0000:02:00.0
GPU_ID=1234:1111
AUDIO_ID=8086:293e

# --- assertions ---------------------------------------------------------------------------------
complete=no
finish() {
    echo "=== gpt-vm: end of boot $boot"
    if [ "$complete" = yes ]; then echo "=== gpt-vm: scenario complete"; fi
    sync
    exit 0
}
bail() {
    echo "Bail out! boot $boot: $*"
    complete=yes
    finish
}
ok() { echo "ok - boot $boot: $*"; }
notok() { echo "not ok - boot $boot: $*"; }
# check DESC CMD...: one assertion; CMD's output is hidden, $why (if set by CMD) explains a failure.
check() {
    local desc=$1
    shift
    why=
    if "$@" >/dev/null 2>&1; then
        ok "$desc"
        return 0
    fi
    notok "$desc${why:+ ($why)}"
    return 1
}

# run NAME CMD...: run a command, keep stdout in $W/NAME.out and stderr in $W/NAME.err, show both
# (indented) in the log, and set $rc and $secs.
run() {
    local name=$1
    shift
    echo "--- \$ $*"
    local t0=$SECONDS
    "$@" >"$W/$name.out" 2>"$W/$name.err" </dev/null
    rc=$?
    secs=$((SECONDS - t0))
    sed 's/^/  2| /' "$W/$name.err"
    sed 's/^/  1| /' "$W/$name.out"
    echo "--- exit $rc after $secs s"
}
# exited NAME WANT: the last run of NAME exited with WANT; on failure $why quotes its stderr.
exited() {
    [ "$rc" = "$2" ] && return 0
    why="exit $rc; stderr: $(grep -v '^\s*$' "$W/$1.err" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
    return 1
}
# jqt NAME FILTER [jq args]: the JSON in $W/NAME.out satisfies FILTER.
jqt() {
    local name=$1 filter=$2
    shift 2
    if [ ! -s "$W/$name.out" ] || [ "$(jq -s length "$W/$name.out" 2>/dev/null)" != 1 ]; then
        why="stdout is not one JSON document"
        return 1
    fi
    jq -e "$@" "$filter" "$W/$name.out" >/dev/null 2>&1 || {
        why="got $(jq -c . "$W/$name.out" | cut -c1-400)"
        return 1
    }
}

# --- facts of the guest ---------------------------------------------------------------------------
driver_of() { # the sysfs driver of a PCI function, or "none"
    local link=/sys/bus/pci/devices/$1/driver
    if [ -e "$link" ]; then basename "$(readlink -f "$link")"; else echo none; fi
}
id_of() { # vendor:device of a PCI function
    local d=/sys/bus/pci/devices/$1
    [ -e "$d" ] || { echo absent; return; }
    printf '%s:%s\n' "$(sed 's/^0x//' "$d/vendor")" "$(sed 's/^0x//' "$d/device")"
}
group_of() { basename "$(readlink -f "/sys/bus/pci/devices/$1/iommu_group" 2>/dev/null)" 2>/dev/null; }
# cmdline_has TOKEN: /proc/cmdline carries TOKEN (a whole argument).
cmdline_has() { tr ' ' '\n' </proc/cmdline | grep -qxF -- "$1"; }
# cmdline_ids: the ids of vfio-pci.ids= on /proc/cmdline, one per line, sorted.
cmdline_ids() { tr ' ' '\n' </proc/cmdline | sed -n 's/^vfio-pci\.ids=//p' | tr ',' '\n' | grep -v '^$' | sort -u; }
# A manifest of /etc: every entry's type, mode, owner and link target, and every file's sha256.
# Nothing is excluded: nothing in the image changes /etc at boot once the first boot is over
# (machine-id is committed by debootstrap's systemd postinst; no network, no timers).
etc_manifest() {
    find /etc -xdev -printf '%y %m %U:%G %p -> %l\n' | sort
    find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum
}
etc_same_as() { # etc_same_as FILE: /etc matches the manifest in FILE
    etc_manifest >"$W/etc.now"
    diff -u "$1" "$W/etc.now" >"$W/etc.diff" && return 0
    why="differs: $(grep '^[-+][^-+]' "$W/etc.diff" | awk '{print $1 $NF}' | sort -u | head -n 8 | tr '\n' ' ')"
    sed 's/^/  etc| /' "$W/etc.diff" | head -n 60
    return 1
}
drivers_match() { # drivers_match FILE: every "ADDR DRIVER" line of FILE holds now
    local a d bad=
    while read -r a d; do
        [ "$(driver_of "$a")" = "$d" ] || bad="$bad $a:$(driver_of "$a")(was $d)"
    done <"$1"
    [ -z "$bad" ] && return 0
    why="now$bad"
    return 1
}
bound_to() { # bound_to DRIVER ADDR...
    local want=$1 a bad=
    shift
    for a in "$@"; do [ "$(driver_of "$a")" = "$want" ] || bad="$bad $a:$(driver_of "$a")"; done
    [ -z "$bad" ] && return 0
    why="got$bad"
    return 1
}
gpt_works() { # the binary runs and has subcommand $1
    gpt --version >/dev/null 2>&1 || { why="gpt --version fails: $(gpt --version 2>&1 | head -n 1)"; return 1; }
    gpt "$1" --help >/dev/null 2>&1 || { why="gpt has no '$1' subcommand: $(gpt "$1" --help 2>&1 | head -n 1)"; return 1; }
}
# The image's generator lists its images: lsinitrd on a dracut guest, lsinitramfs otherwise.
initrd_list() {
    if command -v lsinitrd >/dev/null; then lsinitrd "$1"; else lsinitramfs "$1"; fi
}
initrd_has_vfio() { initrd_list "/boot/initrd.img-$(uname -r)" | grep -q '/vfio-pci\.ko\|/vfio_pci\.ko'; }

# --- gpt's early binding step (initramfs-tools: the init-top script gpt-vfio) ---------------------
EARLY_SCRIPT=/etc/initramfs-tools/scripts/init-top/gpt-vfio
# early_in_image: the image lists gpt's init-top script, and the ORDER file mkinitramfs wrote for
# init-top runs it before initramfs-tools' udev script.
early_in_image() {
    local img d order g u
    img=/boot/initrd.img-$(uname -r)
    d=$W/unpacked
    initrd_list "$img" | grep -q '\(^\|/\)scripts/init-top/gpt-vfio$' || { why="lsinitramfs does not list scripts/init-top/gpt-vfio"; return 1; }
    rm -rf "$d"
    unmkinitramfs "$img" "$d" >/dev/null 2>&1 || { why="unmkinitramfs $img failed"; return 1; }
    order=$(find "$d" -path '*/scripts/init-top/ORDER' | head -n 1)
    [ -n "$order" ] || { why="no scripts/init-top/ORDER in $img"; return 1; }
    cp "$order" "$W/init-top.ORDER"
    g=$(grep -n 'init-top/gpt-vfio ' "$order" | head -n 1 | cut -d: -f1)
    u=$(grep -n 'init-top/udev ' "$order" | head -n 1 | cut -d: -f1)
    rm -rf "$d"
    [ -n "$g" ] && [ -n "$u" ] && [ "$g" -lt "$u" ] && return 0
    why="ORDER runs gpt-vfio at line ${g:-none}, udev at line ${u:-none}"
    return 1
}
# early_ran ADDR...: this boot's kernel log says the early step handed each ADDR to vfio-pci, and
# it said so before any line of bochs (the fake GPU's driver, loaded by udev) and of vfio-pci
# (loaded after init-top).
early_ran() {
    local a n first_other
    dmesg >"$W/dmesg.txt" 2>&1
    grep 'gpt-vfio' "$W/dmesg.txt" | sed 's/^/  dmesg| /'
    for a in "$@"; do
        n=$(grep -n "gpt-vfio: $a driver_override vfio-pci (early, before udev)" "$W/dmesg.txt" | head -n 1 | cut -d: -f1)
        [ -n "$n" ] || { why="no 'gpt-vfio: $a driver_override' line in dmesg"; return 1; }
        # Driver lines only (case matters: the firmware's ACPI tables say BOCHS from 0 s on).
        first_other=$(grep -n 'bochs\|vfio-pci 0000:\|vfio_pci' "$W/dmesg.txt" | grep -v 'gpt-vfio\|Command line' | head -n 1 | cut -d: -f1)
        [ -z "$first_other" ] || [ "$n" -lt "$first_other" ] || {
            why="the gpt-vfio line for $a (dmesg line $n) comes after: $(sed -n "${first_other}p" "$W/dmesg.txt")"
            return 1
        }
    done
}
early_said() { dmesg | grep -qF "gpt-vfio: $1"; } # early_said TEXT

diagnose() {
    echo "--- kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s; cmdline: $(cat /proc/cmdline)"
    for a in $GPU $AUDIO $TWIN; do
        [ -e "/sys/bus/pci/devices/$a" ] &&
            echo "--- $a [$(id_of "$a")] group $(group_of "$a") driver $(driver_of "$a")"
    done
    echo "--- IOMMU groups: $(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l); $(dmesg 2>/dev/null | grep -m1 -i 'DMAR-IR: Enabled' || true)"
    dmesg | grep -i 'vfio' | sed 's/^/  dmesg| /' | head -n 20
}

# --- common steps -----------------------------------------------------------------------------------
settle() {
    udevadm settle --timeout=120 || true
    diagnose
}

# record ADDR...: boot 1's facts that later boots compare with.
record() {
    local a
    etc_manifest >"$state/etc.before"
    for a in "$@"; do echo "$a $(driver_of "$a")"; done >"$state/drivers.before"
    cp /proc/cmdline "$state/cmdline.before"
    echo "--- drivers before: $(tr '\n' ' ' <"$state/drivers.before")"
}

# The guest must look like the scenario's QEMU command line says; else nothing below means anything.
sanity() {
    check "the guest has IOMMU groups (QEMU intel-iommu)" test -n "$(ls /sys/kernel/iommu_groups 2>/dev/null)" ||
        bail "no IOMMU groups in the guest"
    check "$GPU is the fake GPU [$GPU_ID]" test "$(id_of $GPU)" = $GPU_ID || bail "unexpected PCI layout"
    check "$AUDIO is its audio function [$AUDIO_ID]" test "$(id_of $AUDIO)" = $AUDIO_ID || bail "unexpected PCI layout"
    if [ "$scenario" = twin ] || [ "$scenario" = twin-dracut ]; then
        check "$TWIN is an identical second GPU [$GPU_ID] in another IOMMU group" \
            eval 'test "$(id_of $TWIN)" = $GPU_ID && test "$(group_of $TWIN)" != "$(group_of $GPU)"' ||
            bail "unexpected PCI layout"
    fi
}

iommu_json() {
    run iommu gpt iommu --json
    check "gpt iommu --json exits 0" exited iommu 0
    check "gpt iommu --json: one group holds exactly $GPU [$GPU_ID] and $AUDIO [$AUDIO_ID]" \
        jqt iommu '[.groups[] | select(any(.devices[]; .address == $g))] as $m
            | ($m | length) == 1
            and ($m[0].devices | map(.address) | sort) == [$g, $a]
            and ($m[0].devices | map("\(.vendor_id):\(.device_id)") | sort) == ([$gid, $aid] | sort)
            and any($m[0].devices[]; .address == $g and .gpu == true)' \
        --arg g $GPU --arg a $AUDIO --arg gid $GPU_ID --arg aid $AUDIO_ID
    check "gpt iommu --json: the drivers it reports are sysfs's" \
        jqt iommu '[.groups[].devices[] | select(.address == $g or .address == $a) | .driver // "none"] == [$dg, $da]' \
        --arg g $GPU --arg a $AUDIO --arg dg "$(driver_of $GPU)" --arg da "$(driver_of $AUDIO)"
}

# full NAME ARGS...: a first `gpt full` that must configure the two functions of the fake GPU.
full_configures() {
    local name=$1
    shift
    gpt_works full || { notok "gpt full is available ($why)"; bail "cannot configure without gpt full"; }
    run "$name" gpt full "$@" --yes --no-deps --json
    echo "# gpt full took $secs s"
    check "gpt full $* --yes --no-deps --json exits 0" exited "$name" 0 || bail "gpt full failed"
    # The disk holding / is a virtio PCI function: gpt must find it through sysfs's links.
    check "gpt full knew which PCI controller backs / (no \"could not tell\" warning)" \
        eval '! grep -q "could not tell which controller backs" "$W/$name.err"'
    check "gpt full: \"changed\": true, phase vfio, reboot required" \
        jqt "$name" '.changed == true and .phase == "vfio" and .reboot_required == true'
    check "gpt full: devices are exactly $GPU and $AUDIO" \
        jqt "$name" '(.devices | sort) == [$g, $a]' --arg g $GPU --arg a $AUDIO
    if [ "${scenario%-dracut}" = sdboot ]; then
        check "gpt full --json: \"boot\": {\"loader\": \"systemd-boot\"}" jqt "$name" '.boot.loader == "systemd-boot"'
    else
        check "the regenerated grub.cfg carries the IOMMU arguments" grep -q 'intel_iommu=on' /boot/grub/grub.cfg
    fi
    check "the new initramfs holds vfio-pci" initrd_has_vfio
}

# Some process is update-initramfs (a shell script: "sh /usr/sbin/update-initramfs -u …"). The
# image has no procps; the bracket keeps grep from matching its own command line.
update_initramfs_running() { grep -qsa 'update-initramf[s]' /proc/[0-9]*/cmdline; }

# killed_in_update_initramfs ARGS...: SIGKILL a `gpt full ARGS` while the real update-initramfs it
# started is running. The orphaned command still holds gpt's lock (a second gpt refuses) until it
# ends; the files are each whole, and the re-run that follows (full_configures) converges.
killed_in_update_initramfs() {
    gpt_works full || return 0
    echo "--- \$ gpt full $* --yes --no-deps &   (to be killed during update-initramfs)"
    gpt full "$@" --yes --no-deps >"$W/killed.out" 2>"$W/killed.err" </dev/null &
    local pid=$! t0=$SECONDS
    until update_initramfs_running; do
        if ! kill -0 $pid 2>/dev/null || [ $((SECONDS - t0)) -gt 300 ]; then
            wait $pid
            why="gpt exited $? first; stderr: $(head -c 300 "$W/killed.err")"
            notok "gpt full reached update-initramfs ($why)"
            return 1
        fi
        sleep 0.2
    done
    ok "gpt full reached update-initramfs after $((SECONDS - t0)) s; SIGKILL"
    kill -KILL $pid
    wait $pid 2>/dev/null
    sed 's/^/  2| /' "$W/killed.err"
    run locked gpt full "$@" --yes --no-deps
    check "while the orphaned update-initramfs runs, another gpt full refuses: another gpt is running" \
        eval 'exited locked 1 && grep -q "another gpt is running" "$W/locked.err"'
    check "the killed run left /etc/default/grub whole (it parses as shell)" sh -n /etc/default/grub
    t0=$SECONDS
    while update_initramfs_running && [ $((SECONDS - t0)) -lt 600 ]; do sleep 1; done
    check "the orphaned update-initramfs ended (after $((SECONDS - t0)) s more)" eval '! update_initramfs_running'
}

# A second run changes nothing: says so, writes nothing in /etc, rebuilds nothing in /boot.
full_again_is_noop() {
    local name=$1
    shift
    etc_manifest >"$W/etc.after-full"
    ls -lR --time-style=full-iso /boot >"$W/boot.after-full"
    run "$name" gpt full "$@" --yes --no-deps --json
    echo "# second gpt full took $secs s"
    check "second gpt full exits 0" exited "$name" 0
    check "second gpt full: \"changed\": false" jqt "$name" '.changed == false'
    check "second gpt full left /etc as it was" etc_same_as "$W/etc.after-full"
    check "second gpt full rebuilt nothing under /boot (ls -lR: a mounted ESP too)" eval 'ls -lR --time-style=full-iso /boot | diff -q - "$W/boot.after-full"'
}

check_json_passes() {
    gpt_works check || { notok "gpt check is available ($why)"; return; }
    run check gpt check --json
    check "gpt check --json exits 0" exited check 0
    check "gpt check --json: no check fails" \
        jqt check '(.checks | length) > 0 and all(.checks[]; .status != "fail")'
    jq -r '.checks[]? | "  check| \(.status) \(.name): \(.detail)"' "$W/check.out" 2>/dev/null
}

# --- reset and power facts (gpt check's reset lines) ------------------------------------------
# reset_facts_reported ADDR...: after check_json_passes, gpt check --json has one entry per
# function in the `resets` of the card's lines with exactly the guest kernel's reset_method (a list; [] without the attribute) and
# power_state.
reset_facts_reported() {
    local a d rm ps
    for a in "$@"; do
        d=/sys/bus/pci/devices/$a
        rm='[]'
        [ -e "$d/reset_method" ] && rm=$(jq -cn --arg m "$(cat "$d/reset_method")" '$m | split(" ") | map(select(. != ""))')
        ps=$(cat "$d/power_state" 2>/dev/null)
        check "gpt check: $a has reset_method $rm and power_state ${ps:-none}, as sysfs says" \
            jqt check '[.checks[] | .resets[]? | select(.address == $a)] | length == 1 and .[0].reset_method == $rm and (.[0].power_state // "") == $ps' \
            --arg a "$a" --argjson rm "$rm" --arg ps "$ps"
    done
}
idle_d3_off() { test "$(cat /sys/module/vfio_pci/parameters/disable_idle_d3 2>/dev/null)" = Y; }

qemu_names_both() {
    gpt_works qemu || { notok "gpt qemu is available ($why)"; return; }
    run qemu gpt qemu
    check "gpt qemu exits 0" exited qemu 0
    check "gpt qemu passes both functions (01:00.0 and 01:00.1)" \
        eval 'grep -q "host=\(0000:\)\?01:00\.0" "$W/qemu.out" && grep -q "host=\(0000:\)\?01:00\.1" "$W/qemu.out"'
}

reset_restores() {
    gpt_works reset || { notok "gpt reset is available ($why)"; bail "cannot reset"; }
    run reset gpt reset --yes --json
    echo "# gpt reset took $secs s"
    check "gpt reset --yes --json exits 0" exited reset 0 || bail "gpt reset failed"
    check "gpt reset: \"changed\": true, reboot required" jqt reset '.changed == true and .reboot_required == true'
    check "the initramfs no longer holds vfio-pci" eval '! initrd_has_vfio'
    run reset2 gpt reset --yes --json
    check "second gpt reset exits 0 with \"changed\": false" eval 'exited reset2 0 && jqt reset2 ".changed == false"'
}

no_new_args() { # /proc/cmdline has no argument that boot 1's did not (the root= spelling aside)
    local t bad=
    for t in $(cat /proc/cmdline); do
        case $t in BOOT_IMAGE=* | root=*) continue ;; esac
        tr ' ' '\n' <"$state/cmdline.before" | grep -qxF -- "$t" || bad="$bad $t"
    done
    [ -z "$bad" ] && return 0
    why="new:$bad"
    return 1
}

# After reset and a reboot: the host as boot 1 found it.
restored() {
    check "drivers are back to boot 1's ($(tr '\n' ' ' <"$state/drivers.before" | sed 's/ $//'))" \
        drivers_match "$state/drivers.before"
    check "/proc/cmdline has no argument boot 1 did not have" no_new_args
    check "vfio-pci.ids= and intel_iommu=on are gone from /proc/cmdline" \
        eval '! grep -q "vfio-pci\.ids=\|intel_iommu=on" /proc/cmdline'
    check "vfio_pci is not loaded" test ! -e /sys/module/vfio_pci
    check "/etc is byte-identical to boot 1 (contents, modes, owners, links)" etc_same_as "$state/etc.before"
    [ -d /var/lib/gpt ] && echo "--- gpt's state folder after reset: $(find /var/lib/gpt | tr '\n' ' ')"
}

# --- dracut guests ------------------------------------------------------------------------------------
# pkg_installed PKG: dpkg says PKG is installed (not merely its conffiles left: state "rc").
pkg_installed() { [ "$(dpkg-query -W -f '${db:Status-Abbrev}' "$1" 2>/dev/null | cut -c1-2)" = ii ]; }
# every_image_lists PATTERN: lsinitrd of every /boot/initrd.img-* exits 0 and lists PATTERN;
# every_image_lacks PATTERN: ... and lists no PATTERN.
every_image_lists() {
    local f bad= n=0
    for f in /boot/initrd.img-*; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        lsinitrd "$f" >"$W/lsinitrd.out" 2>&1 || { bad="$bad $f(lsinitrd exit $?)"; continue; }
        grep -q -- "$1" "$W/lsinitrd.out" || bad="$bad $f"
    done
    [ "$n" -gt 0 ] || { why="no /boot/initrd.img-*"; return 1; }
    [ -z "$bad" ] && return 0
    why="not in:$bad"
    return 1
}
every_image_lacks() {
    local f bad= n=0
    for f in /boot/initrd.img-*; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        lsinitrd "$f" >"$W/lsinitrd.out" 2>&1 || { bad="$bad $f(lsinitrd exit $?)"; continue; }
        grep -q -- "$1" "$W/lsinitrd.out" && bad="$bad $f"
    done
    [ "$n" -gt 0 ] || { why="no /boot/initrd.img-*"; return 1; }
    [ -z "$bad" ] && return 0
    why="still in:$bad"
    return 1
}
# every_image_lists_file FILE REGEX: FILE inside every /boot/initrd.img-* has a line matching REGEX.
every_image_lists_file() {
    local f bad= n=0
    for f in /boot/initrd.img-*; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        lsinitrd -f "$1" "$f" 2>/dev/null | grep -q -- "$2" || bad="$bad $f"
    done
    [ "$n" -gt 0 ] || { why="no /boot/initrd.img-*"; return 1; }
    [ -z "$bad" ] && return 0
    why="not in $1 of:$bad"
    return 1
}
# loaded_before_root MESSAGE: a kernel message matching MESSAGE came before the root fs was mounted
# read-only by the initramfs (the first "EXT4-fs (vda2): mounted"), i.e. from the initramfs.
loaded_before_root() {
    local m r
    m=$(dmesg | grep -n -m1 -- "$1" | cut -d: -f1)
    r=$(dmesg | grep -n -m1 'EXT4-fs (vda[0-9]*): mounted' | cut -d: -f1)
    [ -n "$m" ] && [ -n "$r" ] && [ "$m" -lt "$r" ] && return 0
    why="message at line ${m:-none}, root mounted at line ${r:-none}"
    return 1
}
# The fake GPU's host drivers, which the image's /etc/dracut.conf.d/10-gpt-vm.conf forces into the
# initramfs and loads first: only gpt's configuration can keep them off the card.
dracut_sanity() {
    local f v
    f=/boot/initrd.img-$(uname -r)
    v=$(dpkg-query -W -f '${Version}' dracut 2>/dev/null)
    echo "--- dracut $v; initramfs-tools: $(dpkg-query -W -f '${db:Status-Abbrev}' initramfs-tools 2>/dev/null || echo none);" \
        "initramfs-tools-core: $(dpkg-query -W -f '${db:Status-Abbrev}' initramfs-tools-core 2>/dev/null || echo none);" \
        "update-initramfs: $(command -v update-initramfs || echo none) $(dpkg -S /usr/sbin/update-initramfs 2>/dev/null | cut -d: -f1)"
    check "the dracut package is installed ($v)" pkg_installed dracut || bail "not a dracut guest"
    check "initramfs-tools is not installed" eval '! pkg_installed initramfs-tools'
    case $scenario in
    dracut | twin-dracut | sdboot-dracut)
        check "dracut < 107: no update-initramfs on the guest" \
            eval 'dpkg --compare-versions "$v" lt 107 && ! command -v update-initramfs'
        check "no initramfs-tools-core, no /etc/initramfs-tools" \
            eval '! pkg_installed initramfs-tools-core && test ! -e /etc/initramfs-tools'
        ;;
    dracut-testing)
        check "dracut >= 107 ships the update-initramfs" \
            eval 'dpkg --compare-versions "$v" ge 107 && test "$(dpkg -S /usr/sbin/update-initramfs 2>/dev/null | cut -d: -f1)" = dracut'
        check "initramfs-tools-core is installed and /etc/initramfs-tools exists" \
            eval 'pkg_installed initramfs-tools-core && test -d /etc/initramfs-tools'
        ;;
    esac
    run lsinitrd lsinitrd "$f"
    check "lsinitrd $f exits 0" exited lsinitrd 0 || bail "cannot list the initramfs"
    check "the initramfs holds bochs and snd_hda_intel (the image's force_drivers)" \
        eval 'grep -q "/bochs\.ko" "$W/lsinitrd.out" && grep -q "/snd-hda-intel\.ko" "$W/lsinitrd.out"'
    check "the initramfs holds no vfio-pci yet" eval '! grep -q "/vfio-pci\.ko\|/vfio_pci\.ko" "$W/lsinitrd.out"'
    run forced lsinitrd -f etc/cmdline.d/20-force_drivers.conf "$f"
    check "the initramfs loads bochs and snd_hda_intel first (rd.driver.pre)" \
        eval 'grep -qx "rd.driver.pre=bochs" "$W/forced.out" && grep -qx "rd.driver.pre=snd_hda_intel" "$W/forced.out"'
    check "$GPU is on bochs-drm and $AUDIO on snd_hda_intel" \
        eval 'bound_to bochs-drm $GPU && bound_to snd_hda_intel $AUDIO'
    check "bochs-drm took the card in the initramfs (before the root fs was mounted)" \
        loaded_before_root 'Initialized bochs-drm'
    check "snd_hda_intel took the audio function in the initramfs" loaded_before_root "snd_hda_intel $AUDIO"
    dmesg | grep -i 'bochs\|snd_hda\|hda_intel\|EXT4-fs\|Switching root\|Run /init' | sed 's/^/  dmesg| /' | head -n 20
    : >/var/lib/gpt-test/post-update.log
}

# What gpt full must have written on a dracut guest, and nothing in /etc/initramfs-tools.
dracut_configured() {
    local conf=/etc/dracut.conf.d/gpt-vfio.conf
    sed 's/^/  conf| /' "$conf" 2>/dev/null
    check "gpt full wrote $conf" test -f "$conf"
    check "$conf: force_drivers+=\" … \" holds vfio vfio_iommu_type1 vfio_pci" \
        eval 'l=$(grep -E "^[[:space:]]*force_drivers\+=\" .* \"[[:space:]]*(#.*)?$" "$conf") &&
              for m in vfio vfio_iommu_type1 vfio_pci; do printf "%s\n" $l | tr -d "\"" | grep -qx "$m" || exit 1; done'
    check "gpt full wrote /etc/modprobe.d/gpt-vfio.conf" test -f /etc/modprobe.d/gpt-vfio.conf
    if [ -e /etc/initramfs-tools ]; then
        check "gpt full changed nothing in /etc/initramfs-tools" \
            eval 'diff <(grep " /etc/initramfs-tools" "$state/etc.before") <(etc_manifest | grep " /etc/initramfs-tools")'
    else
        check "gpt full created no /etc/initramfs-tools" test ! -e /etc/initramfs-tools
    fi
    check "lsinitrd of every image lists vfio_pci" every_image_lists '/vfio-pci\.ko\|/vfio_pci\.ko'
    # vfio-pci.ko alone proves little here: dracut follows modprobe.d softdeps of the forced bochs
    # (softdep bochs pre: vfio-pci) into the image. gpt's force_drivers show as rd.driver.pre.
    check "every image loads vfio_pci early (rd.driver.pre from gpt's force_drivers)" \
        every_image_lists_file etc/cmdline.d/20-force_drivers.conf '^rd\.driver\.pre=vfio_pci$'
    if [ "$scenario" = dracut-testing ]; then
        check "the images were regenerated by dracut's update-initramfs (its post-update hooks ran)" \
            test -s /var/lib/gpt-test/post-update.log
    fi
    sed 's/^/  post-update| /' /var/lib/gpt-test/post-update.log
    etc_manifest | diff "$state/etc.before" - | grep '^[<>]' | sed 's/ -> $//' | awk '{print "  etc changed| " $1 " " $NF}' | sort -u | head -n 20
}

check_json_names_dracut() {
    check "gpt check --json: \"boot\": {\"loader\": \"grub\", \"initramfs\": \"dracut\"}" \
        jqt check '.boot.loader == "grub" and .boot.initramfs == "dracut"'
}

# --- systemd-boot guests ------------------------------------------------------------------------------
ESP=/boot/efi
LOADER_GUID=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
RESCUE_ENTRY=gpt-vm-rescue.conf
# efivar NAME: the string of a Boot Loader Interface variable (4 attribute bytes, then UTF-16LE;
# the loader writes ASCII, so dropping the NULs leaves it); fails when the variable is absent.
efivar() {
    local f=/sys/firmware/efi/efivars/$1-$LOADER_GUID
    [ -r "$f" ] || return 1
    # efivarfs cannot seek: read it whole.
    cat "$f" | tail -c +5 | tr -d '\0'
}
efivar_is() { # efivar_is NAME WANT
    local got
    got=$(efivar "$1") || { why="no $1 variable"; return 1; }
    [ "$got" = "$2" ] && return 0
    why="$1 is '$got'"
    return 1
}
# kernel_entries: the BLS entry of each installed kernel (<token>-<kver>.conf), one per line.
kernel_entries() {
    local k
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        ls "$ESP"/loader/entries/*-"${k#/boot/vmlinuz-}".conf 2>/dev/null
    done
}
entry_options() { sed -n 's/^options[[:space:]]\{1,\}//p' "$1" | tr -s ' \t' '\n\n'; }
# entries_carry REGEX...: there is an entry of every installed kernel, and each entry's options
# have an argument matching each REGEX (whole argument).
entries_carry() {
    local k e a n=0 bad=
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        n=$((n + 1))
        e=$(ls "$ESP"/loader/entries/*-"${k#/boot/vmlinuz-}".conf 2>/dev/null | head -n 1)
        [ -n "$e" ] || { bad="$bad ${k#/boot/vmlinuz-}:no-entry"; continue; }
        for a in "$@"; do entry_options "$e" | grep -qx -- "$a" || bad="$bad $(basename "$e"):$a"; done
    done
    [ "$n" -gt 0 ] || { why="no /boot/vmlinuz-*"; return 1; }
    [ -z "$bad" ] && return 0
    why="lacking:$bad"
    return 1
}
# no_entry_carries_gpt_args: no entry at all under the ESP's loader/entries has an argument gpt
# added (the list boot 1 took from /etc/kernel/cmdline after gpt full).
no_entry_carries_gpt_args() {
    local e a bad=
    [ -s "$state/gpt-args" ] || { why="no list of gpt's arguments from boot 1"; return 1; }
    for e in "$ESP"/loader/entries/*.conf; do
        [ -e "$e" ] || continue
        while read -r a; do entry_options "$e" | grep -qxF -- "$a" && bad="$bad $(basename "$e"):$a"; done <"$state/gpt-args"
    done
    [ -z "$bad" ] && return 0
    why="still:$bad"
    return 1
}
show_entries() {
    local e
    for e in "$ESP"/loader/entries/*.conf; do
        [ -e "$e" ] || continue
        sed "s/^/  $(basename "$e")| /" "$e"
    done
}
# The guest really boots systemd-boot, with the ESP mounted and no GRUB, and the entry of the
# running kernel is the one that booted.
sdboot_sanity() {
    local info sel want
    info=$(efivar LoaderInfo)
    sel=$(efivar LoaderEntrySelected)
    want=$(basename "$(ls "$ESP"/loader/entries/*-"$(uname -r)".conf 2>/dev/null | head -n 1)")
    echo "--- LoaderInfo: ${info:-none}; LoaderEntrySelected: ${sel:-none}; ESP: $(findmnt -n -o SOURCE,FSTYPE,OPTIONS "$ESP" || echo 'not mounted')"
    show_entries
    check "LoaderInfo names systemd-boot ($info)" eval 'case "$info" in "systemd-boot "*) true ;; *) false ;; esac' ||
        bail "the guest did not boot systemd-boot"
    check "no GRUB package is installed, no /etc/default/grub, no /boot/grub" \
        eval '! dpkg-query -W -f "\${db:Status-Abbrev} \${Package}\n" | grep -q "^ii .*grub" && test ! -e /etc/default/grub && test ! -e /boot/grub'
    check "the ESP is mounted at $ESP (vfat)" test "$(findmnt -n -o FSTYPE "$ESP")" = vfat || bail "no ESP"
    run is-installed bootctl is-installed
    check "bootctl is-installed" exited is-installed 0
    check "systemd-boot booted the running kernel's entry (LoaderEntrySelected $sel)" \
        eval 'test -n "$want" && test "$sel" = "$want"'
    check "no /etc/kernel/cmdline: kernel-install falls back to /proc/cmdline" test ! -e /etc/kernel/cmdline
    # Diagnosis: systemd 257's inspect without an image looks for /usr/lib/modules/KVER/vmlinuz,
    # which Debian does not ship (gpt names the image).
    run inspect-bare kernel-install inspect
    run inspect kernel-install inspect "/boot/vmlinuz-$(uname -r)"
    check "kernel-install inspect (with the image): layout bls, boot root $ESP" \
        eval 'grep -q "Layout: bls" "$W/inspect.out" && grep -q "Boot Root: $ESP\$" "$W/inspect.out"'
}
check_json_names_sdboot() {
    local gen=initramfs-tools
    [ "$scenario" = sdboot-dracut ] && gen=dracut
    check "gpt check --json: \"boot\": {\"loader\": \"systemd-boot\", \"initramfs\": \"$gen\"}" \
        jqt "$1" '.boot.loader == "systemd-boot" and .boot.initramfs == $gen' --arg gen "$gen"
}
# What gpt full must have done on a systemd-boot guest: /etc/kernel/cmdline created from
# /proc/cmdline with its arguments, every kernel's entry regenerated with them.
sdboot_configured() {
    sed 's/^/  cmdline| /' /etc/kernel/cmdline 2>/dev/null
    show_entries
    check "gpt full created /etc/kernel/cmdline, one line with root= from /proc/cmdline" \
        eval 'test "$(wc -l </etc/kernel/cmdline)" = 1 && grep -q "root=LABEL=gpt-root" /etc/kernel/cmdline && ! grep -q "initrd=\|BOOT_IMAGE=" /etc/kernel/cmdline'
    # gpt's arguments: what the file has beyond boot 1's command line.
    tr ' ' '\n' </etc/kernel/cmdline | grep -v '^$' | grep -vxF -f <(tr ' ' '\n' <"$state/cmdline.before" | grep -v '^$') >"$state/gpt-args"
    echo "--- gpt's arguments: $(tr '\n' ' ' <"$state/gpt-args")"
    check "gpt's arguments include intel_iommu=on, iommu=pt and vfio-pci.ids=" \
        eval 'grep -qx intel_iommu=on "$state/gpt-args" && grep -qx iommu=pt "$state/gpt-args" && grep -q "^vfio-pci\.ids=" "$state/gpt-args"'
    check "every kernel's entry carries intel_iommu=on, iommu=pt and vfio-pci.ids=" \
        entries_carry intel_iommu=on iommu=pt 'vfio-pci\.ids=.*'
}

# entry_images REGEX: every installed kernel's entry names an initrd on the ESP, and lsinitrd of
# that file (the image systemd-boot really loads, not /boot's) lists REGEX; entry_images_lack: none does.
entry_images() {
    local want=$1 k e i n=0 bad=
    for k in /boot/vmlinuz-*; do
        [ -e "$k" ] || continue
        n=$((n + 1))
        e=$(ls "$ESP"/loader/entries/*-"${k#/boot/vmlinuz-}".conf 2>/dev/null | head -n 1)
        [ -n "$e" ] || { bad="$bad ${k#/boot/vmlinuz-}(no entry)"; continue; }
        i=$(sed -n 's/^initrd[[:space:]]\{1,\}//p' "$e" | tail -n 1)
        [ -n "$i" ] && [ -f "$ESP$i" ] || { bad="$bad $(basename "$e")(initrd '${i:-none}' not on the ESP)"; continue; }
        lsinitrd "$ESP$i" >"$W/lsinitrd.esp" 2>&1 || { bad="$bad $ESP$i(lsinitrd exit $?)"; continue; }
        if grep -q -- "$2" "$W/lsinitrd.esp"; then [ "$want" = yes ] || bad="$bad $ESP$i"; else [ "$want" = no ] || bad="$bad $ESP$i"; fi
    done
    [ "$n" -gt 0 ] || { why="no /boot/vmlinuz-*"; return 1; }
    [ -z "$bad" ] && return 0
    why="wrong:$bad"
    return 1
}
# no_orphan_esp_files: every file on the ESP outside EFI/ and loader/ is the linux or initrd of an
# entry (a dracut that picks its own output leaves MACHINE-ID/KVER/initrd there, booted by nothing).
no_orphan_esp_files() {
    local f rel bad=
    while IFS= read -r f; do
        rel=/${f#"$ESP"/}
        grep -qsx "\(linux\|initrd\)[[:space:]]\{1,\}$rel" "$ESP"/loader/entries/*.conf || bad="$bad $rel"
    done < <(find "$ESP" -type f ! -path "$ESP/EFI/*" ! -path "$ESP/loader/*")
    [ -z "$bad" ] && return 0
    why="booted by no entry:$bad"
    return 1
}

# --- gpt's Debian package (main: installed in boot 1, purged in the last boot) ---------------------------
deb=$lib/gpt.deb
# bash_completes_fu: bash-completion, as an interactive shell would, loads gpt's script from the
# package's place on first use; gpt's completion function completes `gpt fu` to `full`, alone.
bash_completes_fu() {
    local got
    got=$(bash -c '
        . /usr/share/bash-completion/bash_completion || exit 1
        __load_completion gpt || { echo "(no completion script for gpt found)"; exit 1; }
        f=$(complete -p gpt | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
        COMP_WORDS=(gpt fu) COMP_CWORD=1 COMP_LINE="gpt fu" COMP_POINT=6
        "$f" gpt fu gpt
        printf "%s\n" "${COMPREPLY[@]}"' 2>&1)
    [ "$got" = full ] && return 0
    why="got: $(echo "$got" | tr '\n' ' ' | cut -c1-200)"
    return 1
}
installed_from_deb() {
    run dpkg-i dpkg -i "$deb"
    check "dpkg -i gpt.deb exits 0" exited dpkg-i 0 || bail "cannot install gpt from its .deb"
    dpkg -L gpt-vfio >"$state/deb.files"
    sed 's/^/  dpkg -L gpt-vfio| /' "$state/deb.files"
    check "gpt on PATH is the package's /usr/bin/gpt" \
        eval 'test "$(command -v gpt)" = /usr/bin/gpt && dpkg -S /usr/bin/gpt | grep -q "^gpt-vfio: "'
    local v
    v=$(dpkg-query -W -f '${Version}' gpt-vfio)
    check "gpt --version says the package's upstream version (${v%-*} of $v)" \
        eval 'test "$(gpt --version)" = "gpt ${v%-*}"'
    check "man -w gpt finds the package's gpt(1); man -w gpt-full its gpt-full(1)" \
        eval 'test "$(man -w gpt)" = /usr/share/man/man1/gpt.1.gz && test "$(man -w gpt-full)" = /usr/share/man/man1/gpt-full.1.gz'
    check "man renders gpt(1) without a warning" eval 'test -z "$(man --warnings -l /usr/share/man/man1/gpt.1.gz 2>&1 >/dev/null)"'
    check "bash completion completes 'gpt fu' to 'full'" bash_completes_fu
}
# Purged while configured, the package keeps the journal (gpt's only way back) and says why;
# installed again, gpt finds its configuration where it was.
purge_keeps_journal() {
    sha256sum /var/lib/gpt/state.json >"$W/journal.sum" 2>/dev/null
    run purge1 dpkg --purge gpt-vfio
    check "dpkg --purge gpt-vfio on a configured host exits 0" exited purge1 0
    check "... keeps /var/lib/gpt/state.json unchanged and says why" \
        eval 'sha256sum -c --quiet "$W/journal.sum" && grep -q "not deleting /var/lib/gpt" "$W/purge1.err"'
    run dpkg-i2 dpkg -i "$deb"
    check "dpkg -i gpt.deb again exits 0" exited dpkg-i2 0 || bail "cannot reinstall gpt from its .deb"
}
# leftover: a path of the package's file list that is still there and is not a folder another
# installed package owns.
leftovers() {
    local p bad=
    while read -r p; do
        [ -e "$p" ] || [ -L "$p" ] || continue
        [ -d "$p" ] && [ ! -L "$p" ] && dpkg -S "$p" >/dev/null 2>&1 && continue
        bad="$bad $p"
    done <"$state/deb.files"
    [ -z "$bad" ] && return 0
    why="left:$(echo "$bad" | cut -c1-300)"
    return 1
}
purged_leaves_nothing() {
    echo "--- before purge: /var/lib/gpt: $(find /var/lib/gpt 2>/dev/null | tr '\n' ' ' || true)"
    run purge apt-get purge -y gpt-vfio
    check "apt-get purge -y gpt-vfio exits 0" exited purge 0
    echo "--- after purge: /var/lib/gpt: $(find /var/lib/gpt 2>/dev/null | tr '\n' ' ' || true)"
    check "dpkg knows no gpt-vfio any more" eval '! dpkg-query -W gpt-vfio'
    check "nothing of the package's file list (boot 1's dpkg -L gpt-vfio) is left" leftovers
    check "no /var/lib/gpt is left" test ! -e /var/lib/gpt
    check "no gpt on PATH, no gpt(1)" eval '! command -v gpt && ! man -w gpt'
    check "/etc is still byte-identical to boot 1 (before the install)" etc_same_as "$state/etc.before"
}

# --- the card's ROM (main) -------------------------------------------------------------------------------
# QEMU's std VGA carries SeaBIOS's vgabios-stdvga.bin as its ROM; run.sh copies the file QEMU loads
# into the image. gpt rom must refuse the card while bochs-drm drives it, read it once it is on
# vfio-pci, and save exactly the bytes the ROM's own header declares; the HDA function has none.
VGABIOS=$lib/vgabios-stdvga.bin
rom_refused_in_use() {
    gpt_works rom || { notok "gpt rom is available ($why)"; return; }
    run rom-busy gpt rom $GPU
    check "gpt rom $GPU refuses while $(driver_of $GPU) drives the card (exit 1, names the driver and --force)" \
        eval 'exited rom-busy 1 && grep -q "in use by its driver $(driver_of $GPU)" "$W/rom-busy.err" && grep -q -- --force "$W/rom-busy.err"'
    check "... and saved nothing" test ! -e /var/lib/gpt/rom
}
# rom_declared_length FILE: the image length in the PCI data structure of the ROM's first image.
rom_declared_length() {
    local p
    p=$(od -An -tu2 -j24 -N2 "$1" | tr -d ' ')
    [ "$(od -An -c -j"$p" -N4 "$1" | tr -d ' ')" = PCIR ] || return 1
    echo $(($(od -An -tu2 -j$((p + 16)) -N2 "$1" | tr -d ' ') * 512))
}
rom_reads_the_real_vgabios() {
    gpt_works rom || { notok "gpt rom is available ($why)"; return; }
    local len saved
    len=$(rom_declared_length "$VGABIOS") || len=0
    echo "--- host's vgabios-stdvga.bin: $(stat -c %s "$VGABIOS") bytes, its header declares $len"
    run rom gpt rom $GPU
    check "gpt rom $GPU exits 0 on vfio-pci" exited rom 0
    check "gpt rom lists one image: x86 legacy, $GPU_ID, last, checksum valid" \
        eval 'test "$(grep -c "^image " "$W/rom.out")" = 1 && grep -q "^image 1 at 0x0: x86 legacy, $GPU_ID, class 030000, $len bytes, last, checksum valid$" "$W/rom.out"'
    run rom-json gpt rom $GPU --json
    check "gpt rom --json: ok, one x86 legacy image for $GPU_ID, valid checksum, the same file unchanged" \
        jqt rom-json '.ok and (.images | length) == 1 and .images[0].code_type == "x86 legacy"
            and "\(.images[0].vendor_id):\(.images[0].device_id)" == $id and .images[0].last
            and .images[0].checksum == "valid" and .action == "unchanged"' --arg id $GPU_ID
    saved=$(jq -r .file "$W/rom-json.out" 2>/dev/null)
    check "the saved ROM ($saved) equals the host's vgabios-stdvga.bin over the $len bytes its header declares" \
        eval 'test "$len" -gt 0 && test "$(stat -c %s "$saved")" = "$len" && head -c "$len" "$VGABIOS" | cmp - "$saved"'
    run rom-audio gpt rom $AUDIO
    check "gpt rom $AUDIO (the HDA function) says it has no ROM (exit 1)" \
        eval 'exited rom-audio 1 && grep -q "has no ROM" "$W/rom-audio.err"'
}

# --- runtime binding (main): gpt bind / gpt unbind, and a VM that opens the card -------------------------
# The boot VGA (the host's own cirrus display, where fbcon draws the console).
console_vga() {
    local d
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/boot_vga" 2>/dev/null)" = 1 ] && basename "$d"
    done | head -n 1
}
# The card's DRM nodes as udev names them (by-path), one per line.
gpu_dri_nodes() { ls /dev/dri/by-path/ 2>/dev/null | grep "^pci-$GPU-" | sort; }
console_facts() {
    echo "--- boot VGA: $(console_vga); framebuffers:"
    local f
    for f in /sys/class/graphics/fb*; do
        [ -e "$f" ] && echo "  $f -> $(readlink -f "$f/device" 2>/dev/null)"
    done
    for f in /sys/class/vtconsole/vtcon*; do
        [ -e "$f" ] && echo "  $f: $(cat "$f/name") bind=$(cat "$f/bind")"
    done
    echo "--- /dev/dri/by-path: $(ls /dev/dri/by-path 2>/dev/null | tr '\n' ' ')"
}
# Boot 1, before gpt full: the card (bochs-drm + snd_hda_intel) to vfio-pci and back, the
# refusals for real, and a nested VM on the bound card.
runtime_bind_cycle() {
    gpt_works bind || { notok "gpt bind is available ($why)"; return; }
    console_facts
    gpu_dri_nodes >"$state/dri.before"
    local console holder
    console=$(console_vga)
    run bind-console gpt --json bind --device "$console" --dry-run
    check "gpt bind refuses the console card $console (kind console, exit 1)" \
        eval 'exited bind-console 1 && jqt bind-console ".ok == false and .kind == \"console\""'
    # A process holding the card's DRM node.
    sleep 600 <"/dev/dri/by-path/pci-$GPU-card" &
    holder=$!
    run bind-held gpt --json bind --device $GPU --yes --timeout 30
    check "gpt bind refuses while a process holds the card node, naming it (sleep, pid $holder)" \
        eval 'exited bind-held 1 && jqt bind-held ".kind == \"in_use\"" && grep -q "sleep (pid $holder)" "$W/bind-held.err"'
    kill $holder
    wait $holder 2>/dev/null
    check "... and both functions stayed on boot 1's drivers" drivers_match "$state/drivers.before"
    run bind gpt --json bind --device $GPU --yes --timeout 60
    check "gpt bind --device $GPU exits 0" exited bind 0
    check "$GPU and $AUDIO are on vfio-pci after gpt bind" bound_to vfio-pci $GPU $AUDIO
    check "the binding journal /run/gpt/bind.json names bochs-drm and snd_hda_intel" \
        eval 'jq -e ".functions | map(.driver) | sort == [\"bochs-drm\", \"snd_hda_intel\"]" /run/gpt/bind.json'
    check "the card's /dev/dri nodes are gone" test -z "$(gpu_dri_nodes)"
    run check-bound gpt --json check
    check "gpt check says $GPU came to vfio-pci by gpt bind" \
        jqt check-bound '.checks[] | select(.name == "how '$GPU' came to vfio-pci") | .detail | startswith("by `gpt bind`")'
    nested_vm bind
    run unbind gpt --json unbind --yes --timeout 60
    check "gpt unbind exits 0" exited unbind 0
    check "gpt unbind: bochs-drm and snd_hda_intel are bound again" drivers_match "$state/drivers.before"
    udevadm settle --timeout=60 || true
    check "the card's /dev/dri nodes are back" eval 'gpu_dri_nodes | cmp -s - "$state/dri.before" && test -s "$state/dri.before"'
    check "driver_override is empty again on both functions" \
        eval 'test "$(cat /sys/bus/pci/devices/$GPU/driver_override /sys/bus/pci/devices/$AUDIO/driver_override)" = "$(printf "(null)\n(null)")"'
    check "no binding journal is left" test ! -e /run/gpt/bind.json
}
# nested_vm NAME: QEMU (TCG, no display) with the pcie-root-port and vfio-pci devices that
# `gpt qemu --json` prints opens the card's /dev/vfio/GROUP, runs SeaBIOS a few seconds with the
# card in it, and quits cleanly through QMP.
nested_vm() {
    local name=$1 group pid qmp=4444 i
    group=$(group_of $GPU)
    command -v qemu-system-x86_64 >/dev/null || { notok "$name: qemu-system-x86_64 is in the guest"; return; }
    run "$name-qemu" gpt qemu --json
    local -a devs
    mapfile -t devs < <(jq -r '.argv as $a | range(0; $a | length) | select($a[.] == "-device" and ($a[. + 1] | test("^(pcie-root-port|vfio-pci),"))) | "-device", $a[. + 1]' "$W/$name-qemu.out")
    echo "--- \$ qemu-system-x86_64 -machine q35 -accel tcg -m 256 -display none -nodefaults -serial none ${devs[*]} -qmp tcp:127.0.0.1:$qmp,server=on,wait=off"
    qemu-system-x86_64 -machine q35 -accel tcg -m 256 -display none -nodefaults -serial none \
        "${devs[@]}" -qmp tcp:127.0.0.1:$qmp,server=on,wait=off >"$W/$name-vm.out" 2>"$W/$name-vm.err" </dev/null &
    pid=$!
    for i in $(seq 120); do
        ls -l /proc/$pid/fd 2>/dev/null | grep -q "/dev/vfio/$group\$" && break
        kill -0 $pid 2>/dev/null || break
        sleep 1
    done
    check "$name: nested QEMU (TCG) with gpt qemu's ${#devs[@]} device arguments opened /dev/vfio/$group" \
        eval 'ls -l /proc/'$pid'/fd 2>/dev/null | grep -q "/dev/vfio/'$group'\$"'
    sleep 5
    check "$name: ... and still runs 5 s later" kill -0 $pid
    # Connecting may take a few tries on a loaded host; the quit (closing the vfio device,
    # which resets it) may take long under TCG in TCG: up to 3 minutes before it counts as hung.
    (
        for i in $(seq 10); do exec 3<>/dev/tcp/127.0.0.1/$qmp && break; sleep 2; done
        { true <&3; } 2>/dev/null || exit 1
        # One command at a time, each answer read before the next: QEMU then has no unread
        # input when it quits, which would make its close a reset that loses the last events.
        timeout 30 head -n 1 <&3
        printf '{"execute":"qmp_capabilities"}\n' >&3
        timeout 30 head -n 1 <&3
        printf '{"execute":"quit"}\n' >&3
        timeout 60 cat <&3
    ) >"$W/$name-qmp.txt" 2>&1
    local t0=$SECONDS
    for i in $(seq 180); do kill -0 $pid 2>/dev/null || break; sleep 1; done
    kill -9 $pid 2>/dev/null
    wait $pid
    local vm_rc=$?
    sed 's/^/  qmp| /' "$W/$name-qmp.txt"
    sed 's/^/  vm 2| /' "$W/$name-vm.err"
    echo "  vm| nested QEMU ended $((SECONDS - t0)) s after the QMP session, exit status $vm_rc"
    # Exit status 0 within the wait after the quit: QEMU ended by itself and cleanly (killed,
    # it would be 137; crashed, not 0). The SHUTDOWN event is shown when it came through.
    check "$name: ... and quit through QMP with exit status 0" \
        eval 'test '$vm_rc' = 0 && grep -q "^{\"return\": {}}" "$W/'$name'-qmp.txt"'
}

# --- single-GPU mode (single-gpu): libvirt's hook gives the only display to a VM and back ----------
VM=gptvm
VM_UUID=7a0d3c52-0d6e-4f6b-9a53-5f1e3c6b2a10
CARD_NODE=/dev/dri/by-path/pci-$GPU-card
# The libvirt daemon that runs the qemu driver's hooks: virtqemud where the modular daemons are
# enabled, else libvirtd.
libvirt_daemon() {
    if systemctl -q is-enabled virtqemud.service 2>/dev/null || systemctl -q is-enabled virtqemud.socket 2>/dev/null; then
        echo virtqemud
    else
        echo libvirtd
    fi
}
# fbcon's vtconsoles and whether each is bound, one "NAME BIND" per line.
fb_vtcons() {
    local f
    for f in /sys/class/vtconsole/vtcon*; do
        grep -q 'frame buffer' "$f/name" 2>/dev/null && echo "$(basename "$f") $(cat "$f/bind")"
    done
}
fbcon_bound() { fb_vtcons | grep -q ' 1$' || { why="vtconsoles: $(fb_vtcons | tr '\n' ' ')"; return 1; }; }
fbcon_unbound() { ! fb_vtcons | grep -q ' 1$' || { why="vtconsoles: $(fb_vtcons | tr '\n' ' ')"; return 1; }; }
# The framebuffer fbcon draws on belongs to the card.
fb_on_card() {
    local f
    for f in /sys/class/graphics/fb*; do
        [ "$(basename "$(readlink -f "$f/device" 2>/dev/null)")" = $GPU ] && return 0
    done
    why="no /sys/class/graphics/fb* of $GPU"
    return 1
}
# dm_holds_card: display-manager.service is active and its main process holds the card's DRM node.
dm_holds_card() {
    local pid node
    systemctl -q is-active display-manager.service || { why="display-manager.service is $(systemctl is-active display-manager.service)"; return 1; }
    pid=$(systemctl show -P MainPID display-manager.service)
    node=$(readlink -f "$CARD_NODE" 2>/dev/null)
    [ -n "$node" ] || { why="no $CARD_NODE"; return 1; }
    ls -l "/proc/$pid/fd" 2>/dev/null | grep -q " -> $node\$" && return 0
    why="its main process $pid holds no $node"
    return 1
}
dm_stopped() { ! systemctl -q is-active display-manager.service || { why="display-manager.service is active"; return 1; }; }
# vm_pid: the nested QEMU of domain $VM, from libvirt's pid file.
vm_pid() { cat "/run/libvirt/qemu/$VM.pid" 2>/dev/null; }
vm_opened_vfio() {
    local pid group
    pid=$(vm_pid)
    group=$(group_of $GPU)
    [ -n "$pid" ] || { why="no /run/libvirt/qemu/$VM.pid"; return 1; }
    ls -l "/proc/$pid/fd" 2>/dev/null | grep -q "/dev/vfio/$group\$" && return 0
    why="QEMU (pid $pid) has no /dev/vfio/$group open"
    return 1
}
last_record() { # last_record PHASE OK: /run/gpt/single-gpu.json is this phase's, with ok = OK
    jq -e --arg p "$1" --argjson ok "$2" --arg vm $VM '.phase == $p and .ok == $ok and .vm == $vm' /run/gpt/single-gpu.json >/dev/null 2>&1 && return 0
    why="record: $(jq -c . /run/gpt/single-gpu.json 2>/dev/null | cut -c1-300)"
    return 1
}
show_display() {
    echo "--- display: DM $(systemctl is-active display-manager.service) (main pid $(systemctl show -P MainPID display-manager.service));" \
        "$GPU $(driver_of $GPU), $AUDIO $(driver_of $AUDIO); fbcon: $(fb_vtcons | tr '\n' ' '); nodes: $(gpu_dri_nodes | tr '\n' ' ')"
}
# The stand-in display manager: a unit aliased to display-manager.service, as gdm or sddm are,
# whose main process keeps the card's DRM node open as a desktop does.
install_stand_in_dm() {
    cat >/etc/systemd/system/gpt-test-dm.service <<EOF2
[Unit]
Description=Stand-in display manager (VM test): keeps the card's DRM node open, as a desktop does

[Service]
ExecStart=/bin/sh -c 'exec sleep infinity 3<>$CARD_NODE'

[Install]
Alias=display-manager.service
EOF2
    systemctl daemon-reload
    systemctl enable gpt-test-dm.service
    systemctl start display-manager.service
    sleep 1
    check "the stand-in display manager (display-manager.service) runs and holds $CARD_NODE" dm_holds_card ||
        bail "no stand-in display manager"
}
# domain_xml FILE [--unmanaged]: writes FILE, a TCG domain $VM (no disk, no display, SeaBIOS)
# with the card's hostdevs as `gpt qemu --libvirt --single-gpu [--unmanaged] --json` prints them.
domain_xml() {
    local file=$1 flag=${2:-} managed=yes name=qemu-libvirt
    [ -z "$flag" ] || { managed=no; name=qemu-libvirt-unmanaged; }
    run "$name" gpt qemu --libvirt --single-gpu $flag --json
    check "gpt qemu --libvirt --single-gpu $flag exits 0 with both functions' hostdevs, managed='$managed'" \
        eval 'exited '"$name"' 0 && test "$(jq -r .xml "$W/'"$name"'.out" | grep -c "<hostdev mode=.subsystem. type=.pci. managed=.'"$managed"'.>")" = 2'
    {
        echo "<domain type='qemu'>"
        echo "  <name>$VM</name><uuid>$VM_UUID</uuid>"
        echo "  <memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        echo "  <os><type arch='x86_64' machine='q35'>hvm</type></os>"
        echo "  <devices>"
        jq -r .xml "$W/$name.out" | sed 's/^/    /'
        echo "  </devices>"
        echo "</domain>"
    } >"$file"
    sed 's/^/  xml| /' "$file"
}
# hook_acts_for_vm_only FILE: mode 755, and its first test lets only domain $VM through.
hook_acts_for_vm_only() {
    [ "$(stat -c %a "$1" 2>/dev/null)" = 755 ] || { why="mode $(stat -c %a "$1" 2>&1)"; return 1; }
    grep -qxF "[ \"\$1\" = '$VM' ] || exit 0" "$1" || { why="no line [ \"\$1\" = '$VM' ] || exit 0"; return 1; }
}
# vm_cycle LABEL: virsh start → the hook released the card and the VM opened it; virsh destroy →
# the hook restored the display.
vm_cycle() {
    local l=$1 t0
    run "start-$l" virsh start $VM
    echo "# virsh start ($l) took $secs s"
    check "$l: virsh start $VM exits 0 (the hook's release let it start)" exited "start-$l" 0 || {
        journalctl -b --no-pager -n 40 2>/dev/null | sed 's/^/  journal| /'
        return 1
    }
    show_display
    check "$l: the hook stopped the display manager" dm_stopped
    check "$l: $GPU and $AUDIO are on vfio-pci" bound_to vfio-pci $GPU $AUDIO
    check "$l: fbcon let go of the card (no frame-buffer vtconsole bound)" fbcon_unbound
    check "$l: the nested VM's QEMU opened /dev/vfio/$(group_of $GPU)" vm_opened_vfio
    check "$l: gpt's record says the release for $VM succeeded" last_record release true
    sleep 5
    check "$l: ... and $VM still runs 5 s later" eval 'test "$(virsh domstate '$VM' 2>/dev/null | head -n 1)" = running'
    run "destroy-$l" virsh destroy $VM
    echo "# virsh destroy ($l) took $secs s"
    check "$l: virsh destroy $VM exits 0" exited "destroy-$l" 0
    # libvirt runs `release end` before destroy returns; allow the display manager a moment.
    t0=$SECONDS
    until dm_holds_card >/dev/null 2>&1 || [ $((SECONDS - t0)) -gt 60 ]; do sleep 1; done
    udevadm settle --timeout=30 || true
    show_display
    check "$l: gpt's record says the restore for $VM succeeded" last_record restore true
    check "$l: bochs-drm and snd_hda_intel have the card again" drivers_match "$state/drivers.before"
    check "$l: the card's /dev/dri nodes are back" eval 'gpu_dri_nodes | cmp -s - "$state/dri.before"'
    check "$l: fbcon is bound to the card's framebuffer again" eval 'fbcon_bound && fb_on_card'
    check "$l: the stand-in display manager is active and holds $CARD_NODE again" dm_holds_card
    check "$l: driver_override is empty again on both functions" \
        eval 'test "$(cat /sys/bus/pci/devices/$GPU/driver_override /sys/bus/pci/devices/$AUDIO/driver_override)" = "$(printf "(null)\n(null)")"'
}
single_gpu_sanity() {
    console_facts
    check "$GPU is the boot VGA and the guest's only display" \
        eval 'test "$(console_vga)" = $GPU && test "$(lspci -n -d ::0300 | wc -l)" = 1'
    check "$GPU is on bochs-drm and $AUDIO on snd_hda_intel" \
        eval 'bound_to bochs-drm $GPU && bound_to snd_hda_intel $AUDIO'
    check "fbcon draws on the card's framebuffer (a frame-buffer vtconsole is bound)" eval 'fbcon_bound && fb_on_card' ||
        bail "fbcon is not on the card"
    local d v
    d=$(libvirt_daemon)
    v=$(dpkg-query -W -f '${Version}' libvirt-daemon-system 2>/dev/null)
    check "libvirt $v (>= 6.5, runs hooks from qemu.d): $d is active" \
        eval 'dpkg --compare-versions "$v" ge 6.5 && systemctl -q is-active '"$d"'.service'
}
# The refusal for real: a process that is no unit of the user's keeps the card; the hook waits,
# names it, hands everything back and fails the start.
refused_while_held() {
    local holder
    sleep 600 3<>"$CARD_NODE" &
    holder=$!
    run start-held virsh start $VM
    echo "# virsh start (held) took $secs s"
    show_display
    check "held: virsh start fails with gpt's reason, naming the holder (sleep, pid $holder)" \
        eval 'test "$rc" != 0 && grep -q "sleep (pid $holder)" "$W/start-held.err"'
    check "held: $VM did not start" eval 'test "$(virsh domstate '$VM' 2>/dev/null | head -n 1)" = "shut off"'
    check "held: gpt's record says the release failed and handed back" last_record release false
    check "held: the card stayed on bochs-drm and snd_hda_intel" drivers_match "$state/drivers.before"
    check "held: fbcon stayed on the card" eval 'fbcon_bound && fb_on_card'
    check "held: the stand-in display manager is active and holds $CARD_NODE again" dm_holds_card
    run check-held gpt --json check
    check "held: gpt check shows the failed release as a warning" \
        jqt check-held 'any(.checks[]; (.name | startswith("single-GPU mode")) and .status == "warn")'
    kill $holder
    wait $holder 2>/dev/null
}

# --- scenarios ------------------------------------------------------------------------------------------
echo "=== gpt-vm: scenario $scenario, boot $boot, gpt $(gpt --version 2>&1 | head -n 1)"
settle

case "$scenario:$boot" in
# main: full → verify (+ one boot without vfio-pci.ids, the rescue step) → reset → verify.
main:1)
    sanity
    record $GPU $AUDIO
    installed_from_deb
    iommu_json
    rom_refused_in_use
    runtime_bind_cycle
    full_configures full 1234
    full_again_is_noop full2 1234
    ;;
main:2)
    check "/proc/cmdline: vfio-pci.ids= holds exactly $GPU_ID and $AUDIO_ID" \
        eval 'test "$(cmdline_ids | tr "\n" ,)" = "$(printf "%s\n" $GPU_ID $AUDIO_ID | sort | tr "\n" ,)"'
    check "/proc/cmdline: intel_iommu=on (the vIOMMU is Intel DMAR though the CPU says AMD)" cmdline_has intel_iommu=on
    check "/proc/cmdline: iommu=pt" cmdline_has iommu=pt
    check "$GPU and $AUDIO are bound to vfio-pci" bound_to vfio-pci $GPU $AUDIO
    check_json_passes
    reset_facts_reported $GPU $AUDIO
    qemu_names_both
    rom_reads_the_real_vgabios
    nested_vm full
    purge_keeps_journal
    # The rescue step gpt prints: boot once without vfio-pci.ids= (as if edited at the GRUB prompt).
    cp /boot/grub/grub.cfg "$state/grub.cfg.configured"
    sed -i -E 's/[[:space:]]vfio-pci\.ids=[^[:space:]]*//g' /boot/grub/grub.cfg
    check "rescue: the next boot's entry has no vfio-pci.ids=" eval '! grep -q "vfio-pci\.ids=" /boot/grub/grub.cfg'
    ;;
main:3)
    check "rescue: /proc/cmdline has no vfio-pci.ids= but still intel_iommu=on" \
        eval '! grep -q "vfio-pci\.ids=" /proc/cmdline && cmdline_has intel_iommu=on'
    check "rescue: without vfio-pci.ids= the devices are back on boot 1's drivers" \
        drivers_match "$state/drivers.before"
    cat "$state/grub.cfg.configured" >/boot/grub/grub.cfg # the one-off edit is over
    reset_restores
    ;;
main:4)
    restored
    purged_leaves_nothing
    complete=yes
    ;;
# twin: two identical GPUs; only the one with --device goes to vfio-pci, by address.
twin:1)
    sanity
    record $GPU $AUDIO $TWIN
    iommu_json
    if gpt_works full; then
        run refuse gpt full 1234 --yes --no-deps
        check "gpt full 1234 refuses two GPUs of the vendor (exit 1) and names --device" \
            eval 'exited refuse 1 && grep -q -- "--device" "$W/refuse.err"'
        check "the refusal left /etc untouched" etc_same_as "$state/etc.before"
    fi
    # A power cut in the middle: the next boot comes up with whatever the killed run left.
    killed_in_update_initramfs --device $GPU
    ;;
twin:2)
    # After the killed run and a reboot, a re-run converges (it runs the update commands the
    # killed run owed).
    full_configures full --device $GPU --no-idle-d3
    check "gpt full wrote the early step $EARLY_SCRIPT (mode 755) naming $GPU and $AUDIO, never the twin" \
        eval 'test "$(stat -c %a $EARLY_SCRIPT)" = 755 && grep -q "gpt_vfio $GPU " $EARLY_SCRIPT &&
              grep -q "gpt_vfio $AUDIO " $EARLY_SCRIPT && ! grep -q "$TWIN" $EARLY_SCRIPT'
    check "the image holds the early step, and init-top's ORDER runs it before udev" early_in_image
    full_again_is_noop full2 --device $GPU --no-idle-d3
    ;;
twin:3)
    check "/proc/cmdline: vfio-pci.ids= does not hold $GPU_ID (it would take the twin too)" \
        eval '! cmdline_ids | grep -qxF $GPU_ID'
    check "/proc/cmdline: intel_iommu=on" cmdline_has intel_iommu=on
    check "$GPU and $AUDIO are bound to vfio-pci" bound_to vfio-pci $GPU $AUDIO
    check "the twin $TWIN stays on its boot-1 driver" drivers_match <(grep "^$TWIN " "$state/drivers.before")
    check "the early step ran: dmesg has its override of $GPU and $AUDIO before bochs or vfio-pci said anything" \
        early_ran $GPU $AUDIO
    check "the early step never touched the twin $TWIN" eval '! early_said $TWIN'
    check_json_passes
    reset_facts_reported $GPU $AUDIO
    check "vfio_pci's disable_idle_d3 reads Y (gpt full --no-idle-d3)" idle_d3_off
    qemu_names_both
    # The rescue step gpt prints when it binds by address: boot once with gpt.bind=off.
    cp /boot/grub/grub.cfg "$state/grub.cfg.configured"
    sed -i -E '/^[[:space:]]*linux[[:space:]]/ s/$/ gpt.bind=off/' /boot/grub/grub.cfg
    check "rescue: the next boot's entry has gpt.bind=off" grep -q 'gpt\.bind=off' /boot/grub/grub.cfg
    ;;
twin:4)
    check "rescue: /proc/cmdline has gpt.bind=off" cmdline_has gpt.bind=off
    check "rescue: with gpt.bind=off all three functions are on boot 1's drivers" \
        drivers_match "$state/drivers.before"
    check "rescue: the early step said gpt.bind=off and bound nothing" \
        eval 'early_said "gpt.bind=off: nothing bound early" && ! early_said "$GPU driver_override"'
    cat "$state/grub.cfg.configured" >/boot/grub/grub.cfg # the one-off edit is over
    reset_restores
    ;;
twin:5)
    restored
    check "gpt reset removed the early step, and the image no longer holds it" \
        eval 'test ! -e $EARLY_SCRIPT && ! initrd_list "/boot/initrd.img-$(uname -r)" | grep -q scripts/init-top/gpt-vfio'
    check "no early step ran in this boot" eval '! early_said ""'
    complete=yes
    ;;
# twin-dracut: twin's two identical GPUs on the trixie dracut guest, whose image forces bochs and
# snd_hda_intel in (rd.driver.pre, in dracut's cmdline stage): gpt's install hooks in the image set
# the overrides then, and gpt's pre-udev hook, from its module 90gpt-vfio, runs after them (it says
# nothing for a function already on vfio-pci; the rescue boot shows it ran).
twin-dracut:1)
    sanity
    dracut_sanity
    record $GPU $AUDIO $TWIN
    full_configures full --device $GPU
    check "gpt full wrote its dracut module (module-setup.sh, gpt-vfio.sh naming $GPU and $AUDIO, never the twin)" \
        eval 'd=/usr/lib/dracut/modules.d/90gpt-vfio; test -f $d/module-setup.sh &&
              grep -q "gpt_vfio $GPU " $d/gpt-vfio.sh && grep -q "gpt_vfio $AUDIO " $d/gpt-vfio.sh && ! grep -q "$TWIN" $d/gpt-vfio.sh'
    check "/etc/dracut.conf.d/gpt-vfio.conf adds the module (add_dracutmodules+=\" gpt-vfio \")" \
        grep -qx 'add_dracutmodules+=" gpt-vfio "' /etc/dracut.conf.d/gpt-vfio.conf
    check "lsinitrd of every image lists the pre-udev hook 00-gpt-vfio.sh" every_image_lists 'dracut/hooks/pre-udev/00-gpt-vfio\.sh'
    full_again_is_noop full2 --device $GPU
    ;;
twin-dracut:2)
    check "/proc/cmdline: vfio-pci.ids= does not hold $GPU_ID (it would take the twin too)" \
        eval '! cmdline_ids | grep -qxF $GPU_ID'
    check "$GPU and $AUDIO are bound to vfio-pci" bound_to vfio-pci $GPU $AUDIO
    check "the twin $TWIN stays on its boot-1 driver" drivers_match <(grep "^$TWIN " "$state/drivers.before")
    check "the early step never touched the twin $TWIN" eval '! early_said $TWIN'
    check_json_passes
    cp /boot/grub/grub.cfg "$state/grub.cfg.configured"
    sed -i -E '/^[[:space:]]*linux[[:space:]]/ s/$/ gpt.bind=off/' /boot/grub/grub.cfg
    check "rescue: the next boot's entry has gpt.bind=off" grep -q 'gpt\.bind=off' /boot/grub/grub.cfg
    ;;
twin-dracut:3)
    check "rescue: /proc/cmdline has gpt.bind=off" cmdline_has gpt.bind=off
    check "rescue: with gpt.bind=off all three functions are on boot 1's drivers" \
        drivers_match "$state/drivers.before"
    check "rescue: gpt's pre-udev hook ran in the initramfs, said gpt.bind=off and bound nothing" \
        eval 'early_said "gpt.bind=off: nothing bound early" && ! early_said "$GPU driver_override"'
    cat "$state/grub.cfg.configured" >/boot/grub/grub.cfg
    reset_restores
    ;;
twin-dracut:4)
    restored
    check "gpt reset removed its dracut module, and no image lists the hook" \
        eval 'test ! -e /usr/lib/dracut/modules.d/90gpt-vfio && ! every_image_lists 00-gpt-vfio'
    complete=yes
    ;;
# dracut (Debian 13, dracut 106: gpt regenerates with dracut itself) and dracut-testing (dracut
# >= 107 with its update-initramfs, initramfs-tools-core left installed): main's cycle on a guest
# whose initramfs forces the fake GPU's own drivers in.
dracut:1 | dracut-testing:1)
    sanity
    dracut_sanity
    record $GPU $AUDIO
    iommu_json
    full_configures full 1234
    dracut_configured
    full_again_is_noop full2 1234
    ;;
dracut:2 | dracut-testing:2)
    check "/proc/cmdline: vfio-pci.ids= holds exactly $GPU_ID and $AUDIO_ID" \
        eval 'test "$(cmdline_ids | tr "\n" ,)" = "$(printf "%s\n" $GPU_ID $AUDIO_ID | sort | tr "\n" ,)"'
    check "/proc/cmdline: intel_iommu=on" cmdline_has intel_iommu=on
    check "$GPU and $AUDIO are bound to vfio-pci (bochs and snd_hda_intel are in the initramfs too)" \
        bound_to vfio-pci $GPU $AUDIO
    check "vfio-pci took the card in the initramfs (before the root fs was mounted)" \
        loaded_before_root 'vfio_pci: add \[1234:1111'
    check_json_passes
    check_json_names_dracut
    qemu_names_both
    cp /boot/grub/grub.cfg "$state/grub.cfg.configured"
    sed -i -E 's/[[:space:]]vfio-pci\.ids=[^[:space:]]*//g' /boot/grub/grub.cfg
    check "rescue: the next boot's entry has no vfio-pci.ids=" eval '! grep -q "vfio-pci\.ids=" /boot/grub/grub.cfg'
    ;;
dracut:3 | dracut-testing:3)
    check "rescue: /proc/cmdline has no vfio-pci.ids= but still intel_iommu=on" \
        eval '! grep -q "vfio-pci\.ids=" /proc/cmdline && cmdline_has intel_iommu=on'
    check "rescue: without vfio-pci.ids= the devices are back on boot 1's drivers" \
        drivers_match "$state/drivers.before"
    cat "$state/grub.cfg.configured" >/boot/grub/grub.cfg
    reset_restores
    ;;
dracut:4 | dracut-testing:4)
    restored
    check "no gpt-vfio.conf in /etc/dracut.conf.d" test ! -e /etc/dracut.conf.d/gpt-vfio.conf
    check "lsinitrd of every image lists no vfio_pci" every_image_lacks '/vfio-pci\.ko\|/vfio_pci\.ko'
    check "bochs-drm and snd_hda_intel took the card in the initramfs again" \
        eval 'loaded_before_root "Initialized bochs-drm" && loaded_before_root "snd_hda_intel $AUDIO"'
    complete=yes
    ;;
# sdboot (Debian 13, systemd-boot, no GRUB): main's cycle where the arguments go through
# /etc/kernel/cmdline and kernel-install into the BLS entries on the ESP, and the rescue boot is a
# one-shot entry (bootctl set-oneshot) without vfio-pci.ids=.
sdboot:1)
    sanity
    sdboot_sanity
    record $GPU $AUDIO
    run check0 gpt check --json
    check_json_names_sdboot check0
    iommu_json
    full_configures full 1234
    sdboot_configured
    full_again_is_noop full2 1234
    ;;
sdboot:2)
    check "/proc/cmdline: vfio-pci.ids= holds exactly $GPU_ID and $AUDIO_ID" \
        eval 'test "$(cmdline_ids | tr "\n" ,)" = "$(printf "%s\n" $GPU_ID $AUDIO_ID | sort | tr "\n" ,)"'
    check "/proc/cmdline: intel_iommu=on" cmdline_has intel_iommu=on
    check "/proc/cmdline: iommu=pt" cmdline_has iommu=pt
    check "systemd-boot booted (LoaderInfo) the running kernel's entry" \
        eval 'efivar LoaderInfo | grep -q "^systemd-boot " && test "$(efivar LoaderEntrySelected)" = "$(basename "$(kernel_entries | head -n 1)")"'
    check "$GPU and $AUDIO are bound to vfio-pci" bound_to vfio-pci $GPU $AUDIO
    check_json_passes
    check_json_names_sdboot check
    qemu_names_both
    # The rescue: one boot without vfio-pci.ids=. A copy of the running kernel's entry without the
    # argument, booted once (LoaderEntryOneShot), as a user with a locked editor would do.
    e=$(ls "$ESP"/loader/entries/*-"$(uname -r)".conf | head -n 1)
    sed -E -e '/^options/ s/[[:space:]]vfio-pci\.ids=[^[:space:]]*//g' \
        -e 's/^title[[:space:]].*/title      gpt VM test: rescue boot without the vfio-pci ids/' "$e" >"$ESP/loader/entries/$RESCUE_ENTRY"
    sed 's/^/  rescue| /' "$ESP/loader/entries/$RESCUE_ENTRY"
    check "rescue: $RESCUE_ENTRY is the entry of $(uname -r) without vfio-pci.ids=" \
        eval '! grep -q "^options.*vfio-pci\.ids=" "$ESP/loader/entries/$RESCUE_ENTRY" && grep -q "^options.*intel_iommu=on" "$ESP/loader/entries/$RESCUE_ENTRY" && grep -q "^linux" "$ESP/loader/entries/$RESCUE_ENTRY"'
    run list bootctl list --no-pager
    run oneshot bootctl set-oneshot "$RESCUE_ENTRY"
    check "bootctl set-oneshot $RESCUE_ENTRY exits 0" exited oneshot 0
    check "LoaderEntryOneShot is $RESCUE_ENTRY" efivar_is LoaderEntryOneShot "$RESCUE_ENTRY"
    ;;
sdboot:3)
    check "rescue: systemd-boot booted the one-shot entry (LoaderEntrySelected $RESCUE_ENTRY)" \
        efivar_is LoaderEntrySelected "$RESCUE_ENTRY"
    check "rescue: /proc/cmdline has no vfio-pci.ids= but still intel_iommu=on" \
        eval '! grep -q "vfio-pci\.ids=" /proc/cmdline && cmdline_has intel_iommu=on'
    check "rescue: without vfio-pci.ids= the devices are back on boot 1's drivers" \
        drivers_match "$state/drivers.before"
    rm -f "$ESP/loader/entries/$RESCUE_ENTRY"
    check "the rescue entry is removed again" test ! -e "$ESP/loader/entries/$RESCUE_ENTRY"
    reset_restores
    show_entries
    check "after reset no entry under $ESP/loader/entries carries an argument of gpt's" no_entry_carries_gpt_args
    check "after reset /etc/kernel/cmdline, which gpt created, is gone" test ! -e /etc/kernel/cmdline
    ;;
sdboot:4)
    restored
    show_entries
    check "systemd-boot booted the running kernel's own entry again" \
        eval 'test "$(efivar LoaderEntrySelected)" = "$(basename "$(kernel_entries | head -n 1)")"'
    check "no entry under $ESP/loader/entries carries an argument of gpt's" no_entry_carries_gpt_args
    check "no /etc/kernel/cmdline" test ! -e /etc/kernel/cmdline
    complete=yes
    ;;
# sdboot-dracut (Debian 13, systemd-boot, dracut 106 without update-initramfs, no GRUB): dracut
# must write the image where kernel-install takes it from, not pick its own output on the ESP;
# full → reboot → reset, and /etc byte-identical right after the reset (two boots, no third).
sdboot-dracut:1)
    sanity
    sdboot_sanity
    dracut_sanity
    record $GPU $AUDIO
    full_configures full 1234
    sdboot_configured
    dracut_configured
    check "every kernel's entry boots an image on the ESP that holds vfio_pci" entry_images yes '/vfio-pci\.ko\|/vfio_pci\.ko'
    check "no file on the ESP that no entry boots" no_orphan_esp_files
    find "$ESP" -type f ! -path "$ESP/EFI/*" | sed 's/^/  esp| /'
    full_again_is_noop full2 1234
    ;;
sdboot-dracut:2)
    check "/proc/cmdline: vfio-pci.ids= holds exactly $GPU_ID and $AUDIO_ID" \
        eval 'test "$(cmdline_ids | tr "\n" ,)" = "$(printf "%s\n" $GPU_ID $AUDIO_ID | sort | tr "\n" ,)"'
    check "/proc/cmdline: intel_iommu=on" cmdline_has intel_iommu=on
    check "systemd-boot booted (LoaderInfo) the running kernel's entry" \
        eval 'efivar LoaderInfo | grep -q "^systemd-boot " && test "$(efivar LoaderEntrySelected)" = "$(basename "$(kernel_entries | head -n 1)")"'
    check "$GPU and $AUDIO are bound to vfio-pci (bochs and snd_hda_intel are in the image too)" \
        bound_to vfio-pci $GPU $AUDIO
    check "vfio-pci took the card in the initramfs (before the root fs was mounted)" \
        loaded_before_root 'vfio_pci: add \[1234:1111'
    check_json_passes
    check_json_names_sdboot check
    reset_facts_reported $GPU $AUDIO
    reset_restores
    show_entries
    check "after reset no entry under $ESP/loader/entries carries an argument of gpt's" no_entry_carries_gpt_args
    check "after reset no kernel's entry boots an image that holds vfio_pci" entry_images no '/vfio-pci\.ko\|/vfio_pci\.ko'
    check "after reset no file on the ESP that no entry boots" no_orphan_esp_files
    check "after reset /etc/kernel/cmdline, which gpt created, is gone" test ! -e /etc/kernel/cmdline
    check "/etc is byte-identical to boot 1 (contents, modes, owners, links)" etc_same_as "$state/etc.before"
    complete=yes
    ;;
# single-gpu (trixie with libvirt; the fake GPU is the only display, fbcon on it, a stand-in
# display manager holding it): gpt single-gpu enable, libvirt's hook releases the card at
# `virsh start` and restores the display at `virsh destroy`, managed='yes' and 'no'; a second
# holder makes the start fail with the display untouched; disable and reset leave /etc as it was.
# One boot: single-GPU mode changes nothing that needs a reboot.
single-gpu:1)
    sanity
    single_gpu_sanity
    install_stand_in_dm
    gpu_dri_nodes >"$state/dri.before"
    xml=$state/$VM.xml
    xml_unmanaged=$state/$VM-unmanaged.xml
    domain_xml "$xml"
    domain_xml "$xml_unmanaged" --unmanaged
    run define virsh define "$xml"
    check "virsh define $VM (the card's functions as managed hostdevs) exits 0" exited define 0 || bail "no domain"
    record $GPU $AUDIO
    run enable-dry gpt single-gpu enable $VM --dry-run
    check "gpt single-gpu enable --dry-run shows the hook and changes nothing" \
        eval 'exited enable-dry 0 && grep -q "gpt-single-gpu-$VM" "$W/enable-dry.out" && etc_same_as "$state/etc.before"'
    run enable gpt single-gpu enable $VM --yes --timeout 20
    check "gpt single-gpu enable $VM exits 0" exited enable 0 || bail "single-GPU mode not enabled"
    hook=/etc/libvirt/hooks/qemu.d/gpt-single-gpu-$VM
    sed 's/^/  hook| /' "$hook"
    check "the hook $hook is executable (755) and acts for $VM only" hook_acts_for_vm_only "$hook"
    d=$(libvirt_daemon)
    run restart systemctl restart "$d.service"
    check "systemctl restart $d (libvirt reads its hooks at start)" exited restart 0
    vm_cycle managed
    run check-sg gpt --json check
    check "gpt check shows the last restore for $VM as passed" \
        jqt check-sg 'any(.checks[]; .name == "single-GPU mode'"'"'s last restore (domain '$VM')" and .status == "pass")'
    check "the system journal has gpt's lines for the release and the restore" \
        eval 'journalctl -b -t gpt --no-pager >"$W/journal-gpt.txt" 2>&1; grep -q "last release (domain '$VM') succeeded" "$W/journal-gpt.txt" && grep -q "last restore (domain '$VM') succeeded" "$W/journal-gpt.txt"'
    sed 's/^/  journal| /' "$W/journal-gpt.txt" 2>/dev/null | tail -n 4
    refused_while_held
    run define-unmanaged virsh define "$xml_unmanaged"
    check "virsh define $VM with managed='no' hostdevs exits 0" exited define-unmanaged 0 &&
        vm_cycle unmanaged
    run define-again virsh define "$xml"
    check "virsh define $VM as it was" exited define-again 0
    run disable gpt single-gpu disable $VM --yes
    check "gpt single-gpu disable $VM exits 0 and removes the hook" eval 'exited disable 0 && test ! -e "$hook"'
    check "after disable /etc is byte-identical to before enable (contents, modes, owners, links)" etc_same_as "$state/etc.before"
    run enable2 gpt single-gpu enable $VM --yes
    check "gpt single-gpu enable again exits 0" eval 'exited enable2 0 && test -x "$hook"'
    run reset gpt reset --yes --json
    check "gpt reset exits 0 and removes the hook" eval 'exited reset 0 && test ! -e "$hook"'
    check "after reset /etc is byte-identical to before enable (contents, modes, owners, links)" etc_same_as "$state/etc.before"
    complete=yes
    ;;
*)
    bail "no stage for scenario '$scenario' boot $boot"
    ;;
esac
finish
