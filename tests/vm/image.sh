#!/usr/bin/env bash
# Build the Debian disk image the VM test boots: bash tests/vm/image.sh SUITE MIRROR OUTDIR [VARIANT]
# (MIRROR may be empty: debootstrap then uses its default for the suite)
#
# VARIANT is the initramfs generator of the image (its boot stack):
#   initramfs-tools  (default) Debian's own, as debootstrap installs it.
#   dracut           then `apt-get install dracut` (Conflicts: initramfs-tools) and
#                    initramfs-tools-core purged too: a host with dracut only, no /etc/initramfs-tools.
#   dracut-itc       then `apt-get install dracut` alone, initramfs-tools-core kept installed with
#                    /etc/initramfs-tools: the layout of Ubuntu 26.04. (Where the suite's kernel
#                    already prefers dracut, as Debian testing's does, debootstrap installs it.)
#   sdboot           initramfs-tools, and systemd-boot instead of GRUB (no GRUB package at all):
#                    `bootctl install` puts systemd-boot on the ESP (also as EFI/BOOT/BOOTX64.EFI,
#                    the removable path OVMF boots), `kernel-install add` writes the kernel's Boot
#                    Loader Specification entry (loader/entries/<machine-id>-<kver>.conf), and the
#                    guest mounts the ESP at /boot/efi (fstab). No /etc/kernel/cmdline: the guest's
#                    kernel-install falls back to /proc/cmdline, as on a fresh install.
#   sdboot-dracut    sdboot's loader with dracut's images (the dracut variant's packages and
#                    configuration): the layout where a bare `dracut` picks an output on the ESP.
#   libvirt          initramfs-tools, then `apt-get install libvirt-daemon-system libvirt-clients`
#                    beside QEMU: the host of single-GPU mode, whose libvirt runs gpt's hook.
# A dracut image carries /etc/dracut.conf.d/10-gpt-vm.conf: lz4 images and force_drivers of the fake
# GPU's own drivers (bochs, snd_hda_intel), which the initramfs then loads before anything else
# unless gpt's configuration holds them off. The dracut variant keeps Debian's generic images (no
# hostonly: /etc/modprobe.d is not copied into them, so gpt must name its file); dracut-itc builds
# host-only images (dracut copies /etc/modprobe.d itself). Under TCG both rebuild in about the same
# time (measured: 144 s generic, 150 s host-only, lz4).
#
# Writes OUTDIR/disk.img (GPT: FAT ESP labelled ESP, 64 MiB (sdboot: 512 MiB, room for each
# kernel's copy of its kernel and initramfs) + 3 GiB ext4 root labelled gpt-root) and
# OUTDIR/root.offset (byte offset of the root partition, for debugfs). No loop devices and no
# mounts of the image: the root fs is made with `mkfs.ext4 -d`, the ESP with mtools, and the
# partitions are dd'ed into a sparse file. (sdboot's bootctl and kernel-install run in a private
# mount namespace with a tmpfs on the tree's /boot/efi and /proc mounted: both vanish with the
# namespace.) Needs root (debootstrap, unshare).
#
# The image holds no gpt and no test logic: run.sh writes gpt (its binary, or its .deb for the
# main scenario, which installs it: hence man-db and bash-completion here) and the stage script
# into a per-run copy with debugfs, so this image is cached on the inputs of this script and
# tests/vm/guest/ only.

# The whole script is one compound command, read before it runs: editing it during a build cannot
# change what the running copy does.
{
set -euo pipefail

suite=${1:?suite}
mirror=${2?mirror}
out=${3:?output dir}
variant=${4:-initramfs-tools}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[image] %s\n' "$*" >&2; }
# What debootstrap installs besides the kernel: the generator of the variant. A dracut variant names
# none, so the kernel's own first choice comes in (initramfs-tools up to Debian 13, dracut in
# testing: debootstrap takes the first alternative of a dependency, and both cannot be installed).
# The boot loader: GRUB's EFI modules (a standalone GRUB is built from them below), or for sdboot
# systemd-boot with its EFI binaries and bootctl (split into three packages since Debian 13).
loader=grub-efi-amd64-bin,grub-common,grub2-common,
# main's guest also runs a VM of its own on the card (QEMU under TCG, SeaBIOS, no display):
# the proof that a card on vfio-pci can be opened by a VM, not only bound.
extra=
case $variant in
initramfs-tools) generator=initramfs-tools, extra=qemu-system-x86, ;;
dracut) generator= ;;
dracut-itc) generator=initramfs-tools-core, ;;
sdboot) generator=initramfs-tools, loader=systemd-boot,systemd-boot-efi,systemd-boot-tools, ;;
sdboot-dracut) generator= loader=systemd-boot,systemd-boot-efi,systemd-boot-tools, ;;
libvirt) generator=initramfs-tools, extra=qemu-system-x86, ;;
*) log "unknown variant '$variant' (initramfs-tools, dracut, dracut-itc, sdboot, sdboot-dracut, libvirt)"; exit 2 ;;
esac
# The two sides of a variant: its loader (systemd-boot or GRUB) and its generator.
case $variant in sdboot | sdboot-dracut) sdboot=yes ;; *) sdboot=no ;; esac
case $variant in dracut | dracut-itc | sdboot-dracut) dracut=yes ;; *) dracut=no ;; esac

tmp=$out.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
root=$tmp/root
debs=$(dirname "$out")/debs-$suite
mkdir -p "$debs"

t0=$SECONDS
log "debootstrap $suite (minbase)"
# --cache-dir keeps the downloaded .debs for the next rebuild of the image.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
debootstrap --variant=minbase --cache-dir="$(cd "$debs" && pwd)" \
    $([ -r $keyring ] && echo "--keyring=$keyring") \
    --include=linux-image-amd64,${generator}${loader}${extra}kmod,udev,systemd-sysv,lz4,jq,pciutils,man-db,bash-completion \
    "$suite" "$root" ${mirror:+"$mirror"} >"$tmp/debootstrap.log" 2>&1 || {
    tail -n 30 "$tmp/debootstrap.log" >&2
    exit 1
}
log "debootstrap done in $((SECONDS - t0)) s"

# Nothing may stay mounted inside the tree (debootstrap mounts proc/sys while it runs).
if findmnt -rn -o TARGET | grep -qF "$(cd "$root" && pwd)/"; then
    log "something is still mounted under $root; refusing to continue"
    exit 1
fi
rm -f "$root"/var/cache/apt/archives/*.deb

# chroot_apt ARGS...: apt-get inside the tree (no mounts: apt and dpkg need neither /proc nor /dev
# beyond the nodes debootstrap made). The .debs go through the same cache as debootstrap's.
chroot_apt() {
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -q -o APT::Install-Recommends=false \
        -o Dpkg::Use-Pty=false "$@"
}
if [ "$dracut" = yes ]; then
    t1=$SECONDS
    log "variant $variant: apt-get install dracut"
    # The packages' scripts would build an initramfs here, host-only, in a tree without /proc:
    # a stand-in dracut (first on their PATH) makes that a no-op; the real first image is built
    # below with an explicit configuration.
    printf '#!/bin/sh\necho "(image build: dracut $* skipped)"\n' >"$root/usr/local/sbin/dracut"
    chmod 0755 "$root/usr/local/sbin/dracut"
    find "$debs" -maxdepth 1 -name '*.deb' -exec cp {} "$root/var/cache/apt/archives/" \;
    {
        # Where debootstrap already installed dracut (the kernel's first choice), nothing to fetch:
        # the index of a moving suite may be past its Valid-Until on the mirror.
        if ! chroot "$root" dpkg-query -W -f '${db:Status-Abbrev}' dracut 2>/dev/null | grep -q '^ii'; then
            chroot_apt update && chroot_apt install dracut
        fi &&
            if [ "$variant" != dracut-itc ]; then chroot_apt purge initramfs-tools initramfs-tools-core; fi &&
            find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -n {} "$debs/" \; &&
            chroot_apt clean
    } >"$tmp/apt.log" 2>&1 || {
        tail -n 30 "$tmp/apt.log" >&2
        exit 1
    }
    rm -f "$root/usr/local/sbin/dracut"
    rm -rf "$root"/var/lib/apt/lists/*
    log "dracut $(chroot "$root" dpkg-query -W -f '${Version}' dracut) installed in $((SECONDS - t1)) s;" \
        "initramfs-tools: $(chroot "$root" dpkg-query -W -f '${db:Status-Abbrev}' initramfs-tools 2>/dev/null || echo none)," \
        "initramfs-tools-core: $(chroot "$root" dpkg-query -W -f '${db:Status-Abbrev}' initramfs-tools-core 2>/dev/null || echo none)"
fi

if [ "$variant" = libvirt ]; then
    # libvirt by apt, not debootstrap: apt weighs its alternatives and virtual packages. Its
    # maintainer scripts only add users and enable units here (no systemd runs in the tree).
    t1=$SECONDS
    log "variant $variant: apt-get install libvirt-daemon-system libvirt-clients"
    find "$debs" -maxdepth 1 -name '*.deb' -exec cp {} "$root/var/cache/apt/archives/" \;
    {
        chroot_apt update && chroot_apt install libvirt-daemon-system libvirt-clients &&
            find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -n {} "$debs/" \; &&
            chroot_apt clean
    } >"$tmp/apt.log" 2>&1 || {
        tail -n 30 "$tmp/apt.log" >&2
        exit 1
    }
    rm -rf "$root"/var/lib/apt/lists/*
    log "libvirt $(chroot "$root" dpkg-query -W -f '${Version}' libvirt-daemon-system) installed in $((SECONDS - t1)) s"
fi

kver=$(ls "$root/lib/modules" | sort -V | tail -n 1)
log "kernel $kver"

# --- configuration of the guest -------------------------------------------------------------
echo gpt-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tgpt-vm\n' >"$root/etc/hosts"
printf 'LABEL=gpt-root\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
if [ "$sdboot" = yes ]; then
    # The ESP where bootctl and kernel-install expect it; umask as Debian's installer mounts it.
    printf 'LABEL=ESP\t/boot/efi\tvfat\tumask=0077\t0\t0\n' >>"$root/etc/fstab"
fi

# The kernel's own arguments on every image. no_timer_check: on a loaded machine a TCG guest can
# miss the kernel's IO-APIC timer test, and with interrupt remapping on (intel_iommu=on, after gpt
# full) that is a panic ("timer doesn't work through Interrupt-remapped IO-APIC").
base_cmdline="console=ttyS0 no_timer_check"
if [ "$sdboot" = no ]; then
    # Stock /etc/default/grub, made quiet and serial.
    cp "$root/usr/share/grub/default/grub" "$root/etc/default/grub"
    sed -i \
        -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
        -e "s/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX=\"$base_cmdline\"/" \
        -e 's/^#\?GRUB_TERMINAL=.*/GRUB_TERMINAL=serial/' \
        "$root/etc/default/grub"
    grep -q '^GRUB_TERMINAL=serial' "$root/etc/default/grub" || echo 'GRUB_TERMINAL=serial' >>"$root/etc/default/grub"
fi

if [ "$dracut" = no ]; then
    # A small initramfs is what keeps update-initramfs under TCG at ~2 minutes instead of 8+.
    sed -i -e 's/^MODULES=.*/MODULES=dep/' -e 's/^COMPRESS=.*/COMPRESS=lz4/' \
        "$root/etc/initramfs-tools/initramfs.conf"
    grep -q '^COMPRESS=lz4' "$root/etc/initramfs-tools/initramfs.conf" || echo 'COMPRESS=lz4' >>"$root/etc/initramfs-tools/initramfs.conf"
else
    # The strictness of the test: the fake GPU's own drivers are forced into every image and
    # loaded first (rd.driver.pre), so only gpt's configuration (vfio-pci with the ids, its
    # softdeps inside the image) can keep them off the card. The name sorts before gpt's
    # gpt-vfio.conf, so these drivers come first in the load order too.
    if [ "$variant" = dracut-itc ]; then hostonly=yes; else hostonly=no; fi
    cat >"$root/etc/dracut.conf.d/10-gpt-vm.conf" <<EOF2
# VM test image: lz4 images (faster than zstd under TCG), hostonly="$hostonly", and the fake GPU's
# host drivers loaded from the initramfs first.
hostonly="$hostonly"
compress="lz4"
force_drivers+=" bochs snd_hda_intel "
EOF2
    # A post-update hook that only leaves a trace: it shows which regeneration ran the hooks
    # (dracut's update-initramfs does, since 107; a bare `dracut` does not).
    install -d -m 0755 "$root/etc/initramfs/post-update.d"
    cat >"$root/etc/initramfs/post-update.d/zz-gpt-vm-trace" <<'EOF2'
#!/bin/sh
# VM test image: records each run of the post-update hooks (kernel version, image).
echo "$*" >>/var/lib/gpt-test/post-update.log
EOF2
    chmod 0755 "$root/etc/initramfs/post-update.d/zz-gpt-vm-trace"
fi

# A getty on the console hangs up the serial line and the output disappears; apt timers would
# only add noise (the guest has no network).
for unit in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer; do
    ln -sfn /dev/null "$root/etc/systemd/system/$unit"
done

# The test unit and target (see guest/): default.target runs this boot's stage, then powers off.
install -m 0644 "$here/guest/gpt-test.service" "$here/guest/gpt-test.target" "$root/etc/systemd/system/"
ln -sfn /etc/systemd/system/gpt-test.target "$root/etc/systemd/system/default.target"
install -d -m 0755 "$root/usr/local/lib/gpt-test" "$root/var/lib/gpt-test"

if [ "$dracut" = no ]; then
    # First initramfs: MODULES=dep cannot look at the guest's disk from here, so build this one from a
    # copy of the configuration with an explicit module list; the guest's own rebuilds (gpt's
    # update-initramfs) then use the image's MODULES=dep. /etc stays as the packages left it.
    conf=$root/tmp/initramfs-conf
    cp -a "$root/etc/initramfs-tools" "$conf"
    sed -i 's/^MODULES=.*/MODULES=list/' "$conf/initramfs.conf"
    printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>"$conf/modules"
    log "initramfs for $kver"
    chroot "$root" mkinitramfs -d /tmp/initramfs-conf -o "/boot/initrd.img-$kver" "$kver" >"$tmp/mkinitramfs.log" 2>&1 || {
        tail -n 30 "$tmp/mkinitramfs.log" >&2
        exit 1
    }
    rm -rf "$conf"
else
    # First image: host-only cannot look at the guest's disk from here (no /proc, /sys of the
    # guest), so this one is generic but lean: only the drivers named here plus the configured
    # force_drivers; the guest's own rebuilds then use the image's host-only configuration.
    log "initramfs for $kver (dracut)"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
        dracut --force --no-hostonly --no-hostonly-cmdline \
        --drivers "virtio_pci virtio_blk ext4 crc32c_generic" \
        "/boot/initrd.img-$kver" "$kver" >"$tmp/dracut.log" 2>&1 || {
        tail -n 30 "$tmp/dracut.log" >&2
        exit 1
    }
fi

if [ "$sdboot" = yes ]; then
    # systemd-boot and the kernel's entry, by the image's own bootctl and kernel-install. Both
    # insist that the ESP is the root of a mount (SYSTEMD_RELAX_ESP_CHECKS=1 waives only its file
    # system and partition checks), and 90-loaderentry.install finds the ESP's mount point with
    # `stat -c %m` (else the entry names /boot/efi/... paths; a bind mount has the root's device
    # and does not count): so inside the chroot, in a private mount namespace, a tmpfs on
    # /boot/efi takes them, /proc is mounted, and what they wrote is copied out to /tmp/esp
    # before the namespace and its mounts go away. --no-variables: OVMF boots the removable path
    # EFI/BOOT/BOOTX64.EFI, which bootctl installs too. The entry's arguments come from a file
    # outside /etc (KERNEL_INSTALL_CONF_ROOT): the guest has no /etc/kernel/cmdline.
    mkdir -p "$root/boot/efi" "$root/tmp/kernel-conf"
    echo "root=LABEL=gpt-root ro $base_cmdline" >"$root/tmp/kernel-conf/cmdline"
    log "bootctl install; kernel-install add $kver"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --propagation private chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C SYSTEMD_RELAX_ESP_CHECKS=1 /bin/sh -ec '
        mount -t proc proc /proc
        mount -t tmpfs -o mode=0755 esp /boot/efi
        bootctl install --esp-path=/boot/efi --no-variables --random-seed=no
        KERNEL_INSTALL_CONF_ROOT=/tmp/kernel-conf kernel-install --esp-path=/boot/efi \
            add "$1" "/boot/vmlinuz-$1" "/boot/initrd.img-$1"
        cp -a /boot/efi /tmp/esp
    ' sh "$kver" >"$tmp/sdboot.log" 2>&1 || {
        tail -n 30 "$tmp/sdboot.log" >&2
        exit 1
    }
    rm -rf "$root/tmp/kernel-conf"
    if findmnt -rn -o TARGET | grep -qF "$(cd "$root" && pwd)/"; then
        log "something is still mounted under $root; refusing to continue"
        exit 1
    fi
    token=$(cat "$root/etc/machine-id")
    entry=$root/tmp/esp/loader/entries/$token-$kver.conf
    grep -q '^options.*root=LABEL=gpt-root' "$entry" && grep -q "^linux */$token/$kver/linux\$" "$entry" || {
        log "kernel-install wrote no usable entry for $kver:"
        cat "$entry" "$tmp/sdboot.log" >&2
        exit 1
    }
    # The ESP's files go to the ESP; the root fs keeps an empty /boot/efi to mount it on.
    mv "$root/tmp/esp" "$tmp/esp-tree"
else
    # A first grub.cfg by hand (grub-mkconfig cannot probe the guest's disk from here); the guest's
    # update-grub replaces it, and the EFI binary always loads whatever /boot/grub/grub.cfg holds.
    # Its command line is what update-grub will write (bar root=), so boot 1 can be compared with later ones.
    cmdline=$(
        eval "$(grep -E '^GRUB_CMDLINE_LINUX(_DEFAULT)?=' "$root/etc/default/grub")"
        echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"
    )
    mkdir -p "$root/boot/grub"
    cat >"$root/boot/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux (gpt VM test, first boot)' {
    search --no-floppy --label gpt-root --set=root
    linux /boot/vmlinuz-$kver root=LABEL=gpt-root ro $cmdline
    initrd /boot/initrd.img-$kver
}
EOF
fi

# --- disk image -------------------------------------------------------------------------------
root_mib=3072
esp_mib=64
# systemd-boot loads the kernels from the ESP: each installed kernel keeps a copy of its kernel
# and initramfs there.
[ "$sdboot" = no ] || esp_mib=512
log "mkfs.ext4 -d (${root_mib} MiB)"
mkfs.ext4 -q -F -L gpt-root -d "$root" "$tmp/root.ext4" "${root_mib}M" >/dev/null

log "EFI system partition (${esp_mib} MiB)"
rm -f "$tmp/esp.img"
if [ "$sdboot" = yes ]; then
    mkfs.vfat -C -F 32 -n ESP "$tmp/esp.img" $((esp_mib * 1024)) >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -i "$tmp/esp.img" "$tmp/esp-tree"/* ::/
    rm -rf "$tmp/esp-tree"
else
    cat >"$tmp/embedded.cfg" <<'EOF'
search --no-floppy --file /etc/debian_version --set=root
configfile /boot/grub/grub.cfg
EOF
    grub-mkstandalone -O x86_64-efi -d "$root/usr/lib/grub/x86_64-efi" -o "$tmp/BOOTX64.EFI" \
        --modules="part_gpt ext2 fat search search_fs_file search_label configfile linux normal serial terminal" \
        "boot/grub/grub.cfg=$tmp/embedded.cfg"
    mkfs.vfat -C -n ESP "$tmp/esp.img" $((esp_mib * 1024)) >/dev/null
    mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
    mcopy -i "$tmp/esp.img" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
fi

log "disk.img (GPT)"
esp_start=2048                              # sectors of 512 bytes
root_start=$((esp_start + esp_mib * 2048))
total=$((root_start + root_mib * 2048 + 2048))
rm -f "$tmp/disk.img"
truncate -s $((total * 512)) "$tmp/disk.img"
sfdisk -q "$tmp/disk.img" <<EOF
label: gpt
start=$esp_start, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
start=$root_start, size=$((root_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
EOF
dd if="$tmp/esp.img" of="$tmp/disk.img" bs=512 seek=$esp_start conv=notrunc,sparse status=none
dd if="$tmp/root.ext4" of="$tmp/disk.img" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
echo $((root_start * 512)) >"$tmp/root.offset"
echo "$kver" >"$tmp/kernel"

rm -rf "$root" "$tmp/root.ext4" "$tmp/esp.img"
rm -rf "$out"
mv "$tmp" "$out"
log "image ready in $((SECONDS - t0)) s: $out/disk.img"
exit
}
