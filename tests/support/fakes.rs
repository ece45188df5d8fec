//! Fake external commands for tests: `chroot`, `update-grub`, `update-initramfs`, `depmod`,
//! `lsinitramfs`, `dpkg-query`, `apt-get`, written as bash scripts into a temp `bin` folder
//! to put first on PATH.
//!
//! - Each call of a fake (other than `chroot`) appends one line, `name args…`, to the log
//!   ([`Fakes::calls`]).
//! - `chroot ROOT cmd args…` runs the fake `cmd` with `FAKE_ROOT=ROOT`, and logs `cmd`
//!   ([`Fakes::chrooted`]: what gpt ran of a tree's own programs). The other fakes
//!   refuse to run without `FAKE_ROOT` (exit 99): a test can never touch the real `/boot`.
//!   (`dpkg-query --admindir=DIR` needs no root.)
//! - `update-grub` sources `ROOT/etc/default/grub` and `ROOT/etc/default/grub.d/*.cfg` in a
//!   subshell, like grub-mkconfig, and writes `ROOT/boot/grub/grub.cfg` with one entry per
//!   `ROOT/boot/vmlinuz-KVER`: `linux /boot/vmlinuz-KVER root=… ro $GRUB_CMDLINE_LINUX
//!   $GRUB_CMDLINE_LINUX_DEFAULT`. A file that does not parse makes it fail, as the real one.
//! - `update-initramfs -u -k all|KVER` writes `ROOT/boot/initrd.img-KVER`: one `module NAME
//!   PATH` line per module in `ROOT/etc/initramfs-tools/modules` (PATH relative to
//!   `lib/modules/KVER`, `-` if the kernel has no such module file) and one `conf FILE CKSUM`
//!   line per `ROOT/etc/modprobe.d/*.conf`.
//! - `lsinitramfs IMG` lists `usr/lib/modules/KVER/kernel/…/vfio-pci.ko` and
//!   `etc/modprobe.d/…` lines for such an image. An image gpt hands over open, as
//!   `/proc/self/fd/N`, is logged as `fd:/boot/NAME`.
//! - `depmod -a KVER` writes `ROOT/lib/modules/KVER/modules.dep` (fails for a missing KVER).
//! - `dpkg-query -W [-f FMT] PKG…` reads `ROOT/var/lib/dpkg/status`; `apt-get install PKG…`
//!   adds stanzas to it.
//! - `kernel-install` follows systemd's: `$BOOT` from `BOOT_ROOT=` in `ROOT/etc/kernel/install.conf`,
//!   else the first of `/efi`, `/boot`, `/boot/efi` that is a mounted ESP (here: holds `EFI/`),
//!   else `/boot`; the entry token from `ROOT/etc/kernel/entry-token`, else the machine id; the
//!   layout from `layout=`, else `$BOOT/loader/entries.srel` (`type1` → bls), else bls when
//!   `$BOOT/TOKEN` exists, else other. `inspect [[KVER] IMAGE]` prints the environment list of the C version
//!   and, as systemd 257's, fails without an image unless `/usr/lib/modules/$(uname -r)/vmlinuz`
//!   exists (Debian ships none);
//!   `add KVER KERNEL [INITRD…]` in the bls layout copies the files to `$BOOT/TOKEN/KVER/` and
//!   writes `$BOOT/loader/entries/TOKEN-KVER.conf`, whose `options` come from
//!   `/etc/kernel/cmdline` (lines joined, `#` lines skipped), else `/usr/lib/kernel/cmdline`,
//!   else `ROOT/proc/cmdline` less `BOOT_IMAGE=` and `initrd=` (the fallback trap), plus
//!   `systemd.machine_id=` when the token is the machine id; other layouts write nothing and
//!   exit 0. `KERNEL_INSTALL_CONF_ROOT` makes it read those files from that folder only.
//!   `FAKE_ESP_UNMOUNTED=1` makes `add` see no ESP (as when it is not mounted).
//! - `proxmox-boot-tool refresh` runs only with its hook `ROOT/etc/kernel/postinst.d/zz-proxmox-boot`
//!   present (without it the real one says so and exits 0, having written nothing), and syncs
//!   every ESP listed in `ROOT/etc/kernel/proxmox-boot-uuids` whose
//!   `ROOT/dev/disk/by-uuid/UUID` exists (else it warns and skips it, as the real one): the
//!   fake writes into the folder that link leads to (the hosts keep it at
//!   `ROOT/var/tmp/espmounts/UUID`; the real tool mounts the device only while it works). An
//!   ESP with `EFI/proxmox/grubx64.efi`, or any ESP on a host without `/sys/firmware/efi`, gets
//!   `grub/grub.cfg` from `/etc/default/grub`; the others, when they hold `loader/loader.conf`
//!   (else skipped, as the real one), get `loader/entries/proxmox-KVER.conf` whose `options`
//!   are the first line of `/etc/kernel/cmdline`, else `/proc/cmdline` less `initrd=`, and it
//!   fails without `root=` there, as the real one.
//! - `kernelstub [-a OPTS] [-d OPTS]` edits `user.kernel_options` of
//!   `ROOT/etc/kernelstub/configuration` (`-a` appends what is absent; `-d` removes and sorts
//!   the rest, as its set does), rewrites the whole file without a final newline (json.dump),
//!   and writes `{esp_path}/loader/entries/Pop_OS-current.conf` with `root=` from
//!   `ROOT/proc/cmdline`, `ro` and the options.
//! - `FAKE_FAIL=name` makes that fake print to stderr and exit 1; `FAKE_FAIL=name:N` only on
//!   its N-th call (since [`Fakes::new`] or [`Fakes::reset_log`]); several, comma-separated.
//!   `FAKE_SLEEP=name:SECS` makes it sleep first; `FAKE_SIGNAL_PARENT=name:INT` makes it send
//!   SIGINT to the process that started it (gpt) first.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const FAKES: &[&str] = &[
    "chroot",
    "update-grub",
    "update-initramfs",
    "depmod",
    "lsinitramfs",
    "dracut",
    "lsinitrd",
    "dpkg-query",
    "apt-get",
    "kernel-install",
    "proxmox-boot-tool",
    "kernelstub",
];

const COMMON: &str = r##"
# Shared by gpt's fake commands. FAKE_BIN and FAKE_STATE are set by each script.
fake_begin() {
  local me=$1 need_root=$2
  shift 2
  printf '%s\n' "$me${*:+ $*}" >> "$FAKE_STATE/calls.log"
  local counter="$FAKE_STATE/count-$me" n
  n=$(( $(cat "$counter" 2>/dev/null || echo 0) + 1 ))
  echo "$n" > "$counter"
  if [ "$need_root" = yes ] && [ -z "${FAKE_ROOT:-}" ]; then
    echo "fake $me: not called through the fake chroot; refusing to touch the real /" >&2
    exit 99
  fi
  local item items
  IFS=, read -ra items <<< "${FAKE_SLEEP:-}"
  for item in "${items[@]}"; do
    [ "${item%%:*}" = "$me" ] && sleep "${item#*:}"
  done
  IFS=, read -ra items <<< "${FAKE_SIGNAL_PARENT:-}"
  for item in "${items[@]}"; do
    # name:SIG sends SIG to the process that started this one (gpt).
    [ "${item%%:*}" = "$me" ] && kill -s "${item#*:}" "$PPID"
  done
  IFS=, read -ra items <<< "${FAKE_FAIL:-}"
  for item in "${items[@]}"; do
    if [ "$item" = "$me" ] || [ "$item" = "$me:$n" ]; then
      echo "$me: working..." >&2
      echo "E: $me: fake failure requested by FAKE_FAIL ($item)" >&2
      exit 1
    fi
  done
}

# fake_shown_image ARG: how a lister's image argument is logged. gpt hands this machine's
# lister an image it opened inside a root as /proc/self/fd/N: logged `fd:/boot/NAME` (the
# open file's path from its /boot on), to tell which image it was and that it came open.
fake_shown_image() {
  case $1 in
    /proc/self/fd/*) local t; t=$(readlink "$1"); echo "fd:/boot/${t##*/boot/}" ;;
    *) echo "$1" ;;
  esac
}

# A module name in kmod's spelling: vfio-pci.ko.zst -> vfio_pci.
fake_norm() { local n=${1//-/_}; n=${n%.ko*}; echo "$n"; }

# fake_module_file KVER NAME: the module's file under lib/modules/KVER, or - if it has none.
fake_module_file() {
  local want f
  want=$(fake_norm "$2")
  while read -r f; do
    [ -n "$f" ] || continue
    if [ "$(fake_norm "$(basename "$f")")" = "$want" ]; then echo "${f#./}"; return; fi
  done < <(cd "$FAKE_ROOT/lib/modules/$1" 2>/dev/null && find . -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' \) | LC_ALL=C sort)
  echo -
}

# fake_list_image NAME PREFIX IMAGE: the image's files, each line PREFIX then the path.
fake_list_image() {
  local img=$3 k kind a b
  if [ -n "${FAKE_ROOT:-}" ] && [ -f "$FAKE_ROOT$img" ]; then img="$FAKE_ROOT$img"; fi
  if [ ! -f "$img" ]; then echo "$1: $3: No such file or directory" >&2; exit 1; fi
  k=$(sed -n '1s/.* for //p' "$img")
  while read -r kind a b; do
    case $kind in
      module) [ "$b" != - ] && echo "$2usr/lib/modules/$k/$b" ;;
      conf) echo "$2$a" ;;
    esac
  done < "$img"
}

# The kernels of the root: lib/modules/KVER with a /boot/vmlinuz-KVER, newest first.
fake_kernels() {
  local d k
  for d in "$FAKE_ROOT"/lib/modules/*/; do
    [ -d "$d" ] || continue
    k=$(basename "$d")
    [ -e "$FAKE_ROOT/boot/vmlinuz-$k" ] && echo "$k"
  done | sort -V -r
}
"##;

const CHROOT: &str = r##"
if [ $# -lt 2 ]; then echo "chroot: missing operand" >&2; exit 125; fi
root=$1; shift
cmd=${1##*/}; shift
if [ ! -d "$root" ]; then
  echo "chroot: cannot change root directory to '$root': No such file or directory" >&2
  exit 125
fi
printf '%s\n' "$cmd" >> "$FAKE_STATE/chroot.log"
if [ "$cmd" != chroot ] && [ -x "$FAKE_BIN/$cmd" ]; then
  export FAKE_ROOT="$root"
  # Through bash, not execve of the script: a script written a moment ago may still be open
  # in a process another test thread just forked, and execve would fail with ETXTBSY.
  exec /bin/bash "$FAKE_BIN/$cmd" "$@"
fi
echo "chroot: failed to run command '$cmd': No such file or directory" >&2
exit 127
"##;

const UPDATE_GRUB: &str = r##"
fake_begin update-grub yes "$@"
root=$FAKE_ROOT
echo "Generating grub configuration file ..." >&2
if [ ! -f "$root/etc/default/grub" ]; then
  echo "/usr/sbin/grub-mkconfig: /etc/default/grub: No such file or directory" >&2
  exit 1
fi
vals=$(
  set +u
  GRUB_CMDLINE_LINUX=""
  GRUB_CMDLINE_LINUX_DEFAULT=""
  . "$root/etc/default/grub" || exit 1
  for f in "$root"/etc/default/grub.d/*.cfg; do
    [ -e "$f" ] || continue
    . "$f" || exit 1
  done
  printf '%s\n%s\n' "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"
) || { echo "/usr/sbin/grub-mkconfig: syntax error in /etc/default/grub" >&2; exit 1; }
mapfile -t v <<< "$vals"
mkdir -p "$root/boot/grub"
out="$root/boot/grub/grub.cfg"
{
  echo "# grub.cfg written by gpt's fake update-grub"
  for k in $(fake_kernels); do
    echo "Found linux image: /boot/vmlinuz-$k" >&2
    printf "menuentry 'Debian GNU/Linux, with Linux %s' {\n" "$k"
    printf '\tlinux\t/boot/vmlinuz-%s root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro %s %s\n' "$k" "${v[0]:-}" "${v[1]:-}"
    printf '\tinitrd\t/boot/initrd.img-%s\n}\n' "$k"
  done
} > "$out.new" && chmod 444 "$out.new" && mv -f "$out.new" "$out" || exit 1
echo "done" >&2
"##;

const UPDATE_INITRAMFS: &str = r##"
fake_begin update-initramfs yes "$@"
root=$FAKE_ROOT
# dracut 107 and later ship their own update-initramfs: it runs dracut for each kernel.
if [ -e "$root/usr/bin/dracut" ]; then
  for a in "$@"; do
    case $a in -u|-c|-k|all|-v) ;; -*) echo "update-initramfs: unknown option $a" >&2; exit 2 ;; esac
  done
  for k in $(fake_kernels); do
    FAKE_QUIET_LOG=1 /bin/bash "$FAKE_BIN/dracut" --force "/boot/initrd.img-$k" "$k" || exit 1
  done
  exit 0
fi
mode=
kver=
while [ $# -gt 0 ]; do
  case $1 in
    -u) mode=u ;;
    -c) mode=c ;;
    -d) mode=d ;;
    -k) kver=${2:-}; shift ;;
    -v|-t|-b) ;;
    *) echo "update-initramfs: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$mode" ] || [ -z "$kver" ]; then
  echo "Usage: update-initramfs {-c|-d|-u} [-k version] [-v] [-b directory]" >&2
  exit 2
fi
if [ "$kver" = all ]; then
  kvers=$(fake_kernels)
else
  [ -d "$root/lib/modules/$kver" ] || { echo "update-initramfs: /lib/modules/$kver does not exist" >&2; exit 1; }
  kvers=$kver
fi
for k in $kvers; do
  img="$root/boot/initrd.img-$k"
  if [ "$mode" = d ]; then rm -f "$img"; continue; fi
  echo "update-initramfs: Generating /boot/initrd.img-$k" >&2
  {
    echo "# initramfs written by gpt's fake update-initramfs for $k"
    if [ -f "$root/etc/initramfs-tools/modules" ]; then
      while read -r name _; do
        case $name in ''|'#'*) continue ;; esac
        echo "module $(fake_norm "$name") $(fake_module_file "$k" "$name")"
      done < "$root/etc/initramfs-tools/modules"
    fi
    for c in "$root"/etc/modprobe.d/*.conf; do
      [ -e "$c" ] || continue
      echo "conf etc/modprobe.d/$(basename "$c") $(cksum < "$c" | cut -d' ' -f1)"
    done
    # CONFDIR/scripts, as mkinitramfs copies them; ORDER takes only executable ones.
    for c in "$root"/etc/initramfs-tools/scripts/*/*; do
      [ -f "$c" ] && [ -x "$c" ] || continue
      echo "conf scripts/${c#"$root"/etc/initramfs-tools/scripts/} $(cksum < "$c" | cut -d' ' -f1)"
    done
  } > "$img.new" && mv -f "$img.new" "$img" || exit 1
done
"##;

const KERNEL_INSTALL: &str = r##"
fake_begin kernel-install yes "$@"
root=$FAKE_ROOT
conf=${KERNEL_INSTALL_CONF_ROOT:-/etc/kernel}
conf_val() { sed -n "s/^$1=//p" "$root$conf/install.conf" 2>/dev/null | tail -n1 | tr -d '"'; }
machine_id=$(cat "$root/etc/machine-id" 2>/dev/null)
boot=$(conf_val BOOT_ROOT)
if [ -z "$boot" ]; then
  for d in /efi /boot /boot/efi; do
    if [ -d "$root$d/EFI" ] && [ "${FAKE_ESP_UNMOUNTED:-}" != 1 -o "$1" != add ]; then boot=$d; break; fi
  done
fi
boot=${boot:-/boot}
token=$(cat "$root$conf/entry-token" 2>/dev/null)
token=${token:-$machine_id}
layout=$(conf_val layout)
if [ -z "$layout" ]; then
  if [ -f "$root$boot/loader/entries.srel" ]; then
    [ "$(head -n1 "$root$boot/loader/entries.srel")" = type1 ] && layout=bls || layout=other
  elif [ -d "$root$boot/$token" ]; then layout=bls
  else layout=other
  fi
fi
verb=${1:-inspect}
case $verb in
  inspect)
    # systemd 257: `inspect [[KVER] KERNEL-IMAGE]`; without an image it takes
    # /usr/lib/modules/$(uname -r)/vmlinuz, which Debian's kernel packages do not ship.
    case $# in
      0|1) image=/usr/lib/modules/$(uname -r)/vmlinuz
         [ -e "$root$image" ] || { echo "Kernel image not installed to '$image', requiring manual kernel image path specification." >&2; exit 1; } ;;
      2) image=$2 ;;
      *) image=$3 ;;
    esac
    [ -f "$root$image" ] || { echo "Failed to open kernel image file '$image': No such file or directory" >&2; exit 1; }
    printf 'Plugins:\n  /usr/lib/kernel/install.d/90-loaderentry.install\n\nEnvironments:\n'
    printf '  LC_COLLATE=C\n  KERNEL_INSTALL_VERBOSE=0\n  KERNEL_INSTALL_IMAGE_TYPE=unknown\n'
    printf '  KERNEL_INSTALL_MACHINE_ID=%s\n  KERNEL_INSTALL_ENTRY_TOKEN=%s\n' "$machine_id" "$token"
    printf '  KERNEL_INSTALL_BOOT_ROOT=%s\n  KERNEL_INSTALL_LAYOUT=%s\n' "$boot" "$layout"
    printf '\nPlugin arguments:\n  <add|remove> $KERNEL_VERSION %s/%s/$KERNEL_VERSION [$KERNEL_IMAGE] [$INITRD...]\n' "$boot" "$token"
    ;;
  add)
    kver=${2:?kernel-install: add needs KERNEL-VERSION KERNEL-IMAGE}
    kernel=${3:?kernel-install: add needs KERNEL-IMAGE}
    shift 3
    [ -f "$root$kernel" ] || { echo "Error: kernel image argument $kernel not a file" >&2; exit 1; }
    [ "$layout" = bls ] || exit 0
    if [ -f "$root$conf/cmdline" ]; then
      opts=$(grep -v '^#' "$root$conf/cmdline" | tr '\n' ' ')
    elif [ -z "${KERNEL_INSTALL_CONF_ROOT:-}" ] && [ -f "$root/usr/lib/kernel/cmdline" ]; then
      opts=$(grep -v '^#' "$root/usr/lib/kernel/cmdline" | tr '\n' ' ')
    else
      opts=
      for t in $(cat "$root/proc/cmdline"); do
        case $t in BOOT_IMAGE=*|initrd=*) ;; *) opts="$opts $t" ;; esac
      done
    fi
    opts=$(echo $opts)
    if [ "$token" = "$machine_id" ] && [[ " $opts " != *" systemd.machine_id="* ]]; then
      opts="$opts systemd.machine_id=$machine_id"
    fi
    # Boot counting (90-loaderentry.install): with a tries file the entry is named
    # TOKEN-KVER+TRIES.conf; entries of earlier installs (counted or blessed) stay as they are.
    entry=$token-$kver.conf
    if [ -f "$root$conf/tries" ]; then
      read -r tries < "$root$conf/tries"
      case $tries in ''|*[!0-9]*) echo "$conf/tries does not contain an integer." >&2; exit 1 ;; esac
      entry=$token-$kver+$tries.conf
    fi
    dir="$root$boot/$token/$kver"
    mkdir -p "$dir" "$root$boot/loader/entries"
    cp "$root$kernel" "$dir/linux"
    initrds=
    for i in "$@"; do
      cp "$root$i" "$dir/$(basename "$i")"
      initrds="${initrds}initrd      /$token/$kver/$(basename "$i")"$'\n'
    done
    {
      echo "# Boot Loader Specification type#1 entry"
      echo "# File created by 90-loaderentry.install (gpt's fake kernel-install)"
      echo "title      Debian GNU/Linux 13 (trixie)"
      echo "version    $kver"
      echo "machine-id $machine_id"
      echo "sort-key   debian"
      echo "options    $opts"
      echo "linux      /$token/$kver/linux"
      printf '%s' "$initrds"
    } > "$root$boot/loader/entries/$entry"
    ;;
  remove)
    rm -rf "$root$boot/$token/${2:?}" "$root$boot/loader/entries/$token-$2.conf" "$root$boot/loader/entries/$token-$2+"*.conf
    ;;
  *) echo "Unknown command verb '$verb'." >&2; exit 1 ;;
esac
"##;

const PROXMOX_BOOT_TOOL: &str = r##"
fake_begin proxmox-boot-tool yes "$@"
root=$FAKE_ROOT
[ "${1:-}" = refresh ] || { echo "fake proxmox-boot-tool: only refresh" >&2; exit 2; }
if [ ! -f "$root/etc/kernel/postinst.d/zz-proxmox-boot" ]; then
  echo "Hook script 'zz-proxmox-boot' not found or not executable, skipping." >&2
  exit 0
fi
echo "Running hook script 'zz-proxmox-boot'.." >&2
uuids=$(grep -v '^#' "$root/etc/kernel/proxmox-boot-uuids" 2>/dev/null | awk '{print $1}')
if [ -z "$uuids" ]; then
  echo "No /etc/kernel/proxmox-boot-uuids found, skipping ESP sync." >&2
  exit 0
fi
if [ -f "$root/etc/kernel/cmdline" ]; then
  opts=$(head -n1 "$root/etc/kernel/cmdline")
else
  opts=
  for t in $(cat "$root/proc/cmdline"); do
    case $t in initrd=*) ;; *) opts="$opts $t" ;; esac
  done
  opts=$(echo $opts)
fi
for u in $uuids; do
  if [ ! -e "$root/dev/disk/by-uuid/$u" ]; then
    echo "WARN: /dev/disk/by-uuid/$u does not exist - clean '/etc/kernel/proxmox-boot-uuids'! - skipping" >&2
    continue
  fi
  esp=$(readlink -f "$root/dev/disk/by-uuid/$u")
  if [ -f "$esp/EFI/proxmox/grubx64.efi" ] || [ ! -d "$root/sys/firmware/efi" ]; then
    echo "Copying and configuring kernels on /dev/disk/by-uuid/$u" >&2
    vals=$(
      set +u
      . "$root/etc/default/grub" || exit 1
      printf '%s %s
' "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"
    ) || { echo "syntax error in /etc/default/grub" >&2; exit 1; }
    mkdir -p "$esp/grub"
    for k in $(fake_kernels); do
      printf '	linux	/vmlinuz-%s root=ZFS=rpool/ROOT/pve-1 ro %s
' "$k" "$vals"
    done > "$esp/grub/grub.cfg"
  else
    if [ ! -f "$esp/loader/loader.conf" ]; then
      echo "/dev/disk/by-uuid/$u contains no loader.conf - skipping" >&2
      continue
    fi
    echo "Copying and configuring kernels on /dev/disk/by-uuid/$u" >&2
    if [[ " $opts " != *" root="* ]]; then
      echo "No root= parameter in /etc/kernel/cmdline found!" >&2
      exit 1
    fi
    mkdir -p "$esp/loader/entries"
    rm -f "$esp"/loader/entries/proxmox-*.conf
    for k in $(fake_kernels); do
      mkdir -p "$esp/EFI/proxmox/$k"
      [ -f "$root/boot/initrd.img-$k" ] && cp "$root/boot/initrd.img-$k" "$esp/EFI/proxmox/$k/"
      printf 'title    Proxmox Virtual Environment\nversion  %s\noptions  %s\nlinux    /EFI/proxmox/%s/vmlinuz-%s\ninitrd   /EFI/proxmox/%s/initrd.img-%s\n' \
        "$k" "$opts" "$k" "$k" "$k" "$k" > "$esp/loader/entries/proxmox-$k.conf"
    done
  fi
done
"##;

const KERNELSTUB: &str = r##"
fake_begin kernelstub yes "$@"
root=$FAKE_ROOT
conf="$root/etc/kernelstub/configuration"
[ -f "$conf" ] || { echo "kernelstub: no configuration" >&2; exit 1; }
add= del=
while [ $# -gt 0 ]; do
  case $1 in
    -a|--add-options) add=$2; shift ;;
    -d|--delete-options) del=$2; shift ;;
    -v|-l|--verbose) ;;
    *) echo "kernelstub: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# user.kernel_options, one per line (kernelstub's own layout: one item per line).
mapfile -t opts < <(awk '
  /^  "user": \{/ { user=1 }
  user && /"kernel_options": \[/ { inlist=1; next }
  inlist && /^ *\]/ { exit }
  inlist { gsub(/^ *"|",? *$/, ""); print }
' "$conf")
for a in $add; do
  found=
  for o in "${opts[@]}"; do [ "$o" = "$a" ] && found=1; done
  [ -n "$found" ] || opts+=("$a")
done
if [ -n "$del" ]; then
  keep=()
  for o in "${opts[@]}"; do
    [[ " $del " == *" $o "* ]] || keep+=("$o")
  done
  mapfile -t opts < <(printf '%s\n' "${keep[@]}" | sort)
fi
list=$(for k in "${!opts[@]}"; do
  sep=,; [ "$k" -eq $(( ${#opts[@]} - 1 )) ] && sep=
  printf '      "%s"%s\n' "${opts[$k]}" "$sep"
done)
new=$(awk -v list="$list" '
  /^  "user": \{/ { user=1 }
  user && /"kernel_options": \[/ && !done { print "    \"kernel_options\": ["; if (list != "") print list; skip=1; next }
  skip && /^ *\]/ { sub(/^ */, "    "); print; skip=0; done=1; next }
  skip { next }
  { print }
' "$conf")
printf '%s' "$new" > "$conf.new" && mv -f "$conf.new" "$conf"
esp=$(awk '/^  "user": \{/ { user=1 } user && /"esp_path"/ { gsub(/.*: *"|",?$/, ""); print; exit }' "$conf")
esp=${esp:-/boot/efi}
rootarg=
for t in $(cat "$root/proc/cmdline"); do case $t in root=*) rootarg=$t ;; esac; done
k=$(fake_kernels | head -n1)
mkdir -p "$root$esp/loader/entries" "$root$esp/EFI/Pop_OS-fake"
[ -f "$root/boot/initrd.img-$k" ] && cp "$root/boot/initrd.img-$k" "$root$esp/EFI/Pop_OS-fake/initrd.img"
printf 'title Pop!_OS\nlinux /EFI/Pop_OS-fake/vmlinuz.efi\ninitrd /EFI/Pop_OS-fake/initrd.img\noptions %s ro %s\n' \
  "$rootarg" "${opts[*]}" > "$root$esp/loader/entries/Pop_OS-current.conf"
"##;

const LSINITRAMFS: &str = r##"
fake_begin lsinitramfs no "$(fake_shown_image "${1:-}")"
[ -f "${FAKE_ROOT:-}${1:-}" ] || [ -f "${1:-}" ] && echo "." && echo "usr"
fake_list_image lsinitramfs "" "${1:-}"
"##;

/// dracut: `--force --regenerate-all` (each image where dracut itself puts it without an
/// output path), or `--force IMAGE KVER`. The image is in the fake
/// update-initramfs's format: one `module` line per module of the `force_drivers+=` and
/// `add_drivers+=` lines of `ROOT/etc/dracut.conf.d/*.conf` (only `.conf` files, as dracut),
/// one `conf` line per `install_items+=` file (and per modprobe.d file when `hostonly="yes"`),
/// and for each module of `add_dracutmodules+=` one `conf` line per `inst_hook` of its
/// `ROOT/usr/lib/dracut/modules.d/NNNAME/module-setup.sh` (a module not there fails, as dracut).
const DRACUT: &str = r##"
if [ -z "${FAKE_QUIET_LOG:-}" ]; then fake_begin dracut yes "$@"; fi
root=$FAKE_ROOT
force= all= image= kver=
while [ $# -gt 0 ]; do
  case $1 in
    --force|-f) force=1 ;;
    --regenerate-all) all=1 ;;
    -q|--quiet) ;;
    -*) echo "dracut: unknown option $1" >&2; exit 1 ;;
    *) if [ -z "$image" ]; then image=$1; else kver=$1; fi ;;
  esac
  shift
done
[ -n "$force" ] || { echo "dracut: Will not override existing initramfs without --force" >&2; exit 1; }
conf_value() { # NAME: the words of every NAME+=" … " line, in file order
  local f
  for f in "$root"/etc/dracut.conf.d/*.conf; do
    [ -f "$f" ] || continue
    sed -n "s/^[[:space:]]*$1+=[[:space:]]*\"\\(.*\\)\"[[:space:]]*$/\\1/p" "$f"
  done | tr -s ' \t' '\n\n' | sed '/^$/d'
}
build() { # KVER IMAGE
  local k=$1 img=$root$2 want f
  [ -d "$root/lib/modules/$k" ] || { echo "dracut: Cannot find module directory /lib/modules/$k" >&2; return 1; }
  echo "dracut: *** Creating image file '$2' ***" >&2
  {
    echo "# initramfs written by gpt's fake dracut for $k"
    for want in $(conf_value force_drivers; conf_value add_drivers); do
      echo "module $(fake_norm "$want") $(fake_module_file "$k" "$want")"
    done
    for f in $(conf_value install_items); do
      [ -f "$root$f" ] && echo "conf ${f#/} $(cksum < "$root$f" | cut -d' ' -f1)"
    done
    for want in $(conf_value add_dracutmodules); do
      module_hooks "$want" || return 1
    done
  } > "$img.new" && mv -f "$img.new" "$img"
}
module_hooks() { # NAME: the hooks its module-setup.sh installs with inst_hook HOOK NN "$moddir/FILE"
  local dir setup hook nn file
  for dir in "$root"/usr/lib/dracut/modules.d/[0-9][0-9]"$1"; do
    setup=$dir/module-setup.sh
    [ -f "$setup" ] || continue
    while read -r cmd hook nn file; do
      [ "$cmd" = inst_hook ] || continue
      file=${file//\"/}; file=${file#\$moddir/}
      [ -f "$dir/$file" ] || { echo "dracut: Cannot install a hook ($dir/$file) that does not exist." >&2; return 1; }
      echo "conf var/lib/dracut/hooks/$hook/$nn-$file $(cksum < "$dir/$file" | cut -d' ' -f1)"
    done < "$setup"
    return 0
  done
  echo "dracut: Module '$1' cannot be found or installed." >&2
  return 1
}
# Without an output path dracut picks its own (the `if ! [[ $outfile ]]` block of
# /usr/bin/dracut, 059 to 110): on a systemd-boot host's ESP, $BOOT/MACHINE-ID/KVER/initrd.
outfile_for() { # KVER
  local k=$1 mid d
  mid=$(cat "$root/etc/machine-id" 2>/dev/null)
  for d in /efi /boot /boot/efi; do
    if [ -n "$mid" ] && [ -d "$root$d/loader/entries" ] && [ -d "$root$d/$mid" ]; then
      echo "$d/$mid/$k/initrd"; return
    fi
  done
  if [ -f "$root/lib/modules/$k/initrd" ]; then echo "/lib/modules/$k/initrd"; return; fi
  echo "/boot/initrd.img-$k"
}
if [ -n "$all" ]; then
  for k in $(fake_kernels); do
    out=$(outfile_for "$k"); mkdir -p "$root$(dirname "$out")"
    build "$k" "$out" || exit 1
  done
else
  [ -n "$image" ] && [ -n "$kver" ] || { echo "dracut: give IMAGE KVER or --regenerate-all" >&2; exit 1; }
  build "$kver" "$image" || exit 1
fi
"##;

/// lsinitrd IMAGE: the image's files, one per line with ls -l's columns before the path, as
/// the real one prints them.
const LSINITRD: &str = r##"
fake_begin lsinitrd no "$(fake_shown_image "${1:-}")"
[ -f "${FAKE_ROOT:-}${1:-}" ] || [ -f "${1:-}" ] && echo "Image: $1: 12M" && echo "========================================================================"
fake_list_image lsinitrd "-rw-r--r--   1 root     root        12345 Jan  1 00:00 " "${1:-}"
"##;

const DEPMOD: &str = r##"
fake_begin depmod yes "$@"
root=$FAKE_ROOT
kver=
for a in "$@"; do
  case $a in -a|-A|-q) ;; -*) ;; *) kver=$a ;; esac
done
if [ -z "$kver" ]; then
  echo "fake depmod: give the kernel version (inside a chroot, uname -r is the host's kernel)" >&2
  exit 1
fi
dir="$root/lib/modules/$kver"
if [ ! -d "$dir" ]; then
  echo "depmod: ERROR: could not open directory /lib/modules/$kver: No such file or directory" >&2
  exit 1
fi
(cd "$dir" && find . -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' \) | sed 's|^\./||; s|$|:|' | LC_ALL=C sort) > "$dir/modules.dep.new" \
  && mv -f "$dir/modules.dep.new" "$dir/modules.dep"
"##;

const DPKG_QUERY: &str = r##"
admindir=
fmt='${binary:Package}\t${Version}\n'
pkgs=()
args=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    -W|--show) ;;
    -f|--showformat) fmt=$2; shift ;;
    -f*) fmt=${1#-f} ;;
    --showformat=*) fmt=${1#--showformat=} ;;
    --admindir=*) admindir=${1#--admindir=} ;;
    --admindir) admindir=$2; shift ;;
    -*) echo "dpkg-query: unknown option $1" >&2; exit 2 ;;
    *) pkgs+=("$1") ;;
  esac
  shift
done
if [ -n "$admindir" ]; then need=no; else need=yes; fi
fake_begin dpkg-query "$need" "${args[@]}"
status=${admindir:-$FAKE_ROOT/var/lib/dpkg}/status
rc=0
for p in "${pkgs[@]}"; do
  stanza=$(awk -v p="$p" 'BEGIN{RS=""} $0 ~ "(^|\n)Package: " p "(\n|$)" {print; exit}' "$status" 2>/dev/null)
  if [ -z "$stanza" ]; then
    echo "dpkg-query: no packages found matching $p" >&2
    rc=1
    continue
  fi
  st=$(sed -n 's/^Status: //p' <<< "$stanza")
  ver=$(sed -n 's/^Version: //p' <<< "$stanza")
  case $st in "install ok installed") abbrev="ii " ;; *) abbrev="un " ;; esac
  out=$fmt
  out=${out//'${binary:Package}'/$p}
  out=${out//'${Package}'/$p}
  out=${out//'${Version}'/$ver}
  out=${out//'${Status}'/$st}
  out=${out//'${db:Status-Abbrev}'/$abbrev}
  out=${out//'${db:Status-Status}'/${st##* }}
  printf '%b' "$out"
done
exit $rc
"##;

const APT_GET: &str = r##"
fake_begin apt-get yes "$@"
status="$FAKE_ROOT/var/lib/dpkg/status"
sub=
pkgs=()
for a in "$@"; do
  case $a in -*) ;; *) if [ -z "$sub" ]; then sub=$a; else pkgs+=("$a"); fi ;; esac
done
case $sub in
  update) echo "Reading package lists... Done" >&2 ;;
  install)
    mkdir -p "$(dirname "$status")"
    for p in "${pkgs[@]}"; do
      printf 'Package: %s\nStatus: install ok installed\nVersion: 1.0-fake\n\n' "$p" >> "$status"
      echo "Setting up $p (1.0-fake) ..."
    done ;;
  *) echo "E: Invalid operation $sub" >&2; exit 100 ;;
esac
"##;

/// A folder of fake commands and their call log.
pub struct Fakes {
    dir: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Default for Fakes {
    fn default() -> Self {
        Self::new()
    }
}

impl Fakes {
    pub fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let state = dir.path().to_path_buf();
        fs::write(bin.join(".common.sh"), COMMON).unwrap();
        for (name, body) in [
            ("chroot", CHROOT),
            ("update-grub", UPDATE_GRUB),
            ("update-initramfs", UPDATE_INITRAMFS),
            ("depmod", DEPMOD),
            ("lsinitramfs", LSINITRAMFS),
            ("dracut", DRACUT),
            ("lsinitrd", LSINITRD),
            ("dpkg-query", DPKG_QUERY),
            ("apt-get", APT_GET),
            ("kernel-install", KERNEL_INSTALL),
            ("proxmox-boot-tool", PROXMOX_BOOT_TOOL),
            ("kernelstub", KERNELSTUB),
        ] {
            let script = format!(
                "#!/bin/bash\n# {name}: a fake for gpt's tests (tests/support/fakes.rs)\nset -u\n\
                 FAKE_BIN='{}'\nFAKE_STATE='{}'\n. \"$FAKE_BIN/.common.sh\"\n{body}",
                bin.display(),
                state.display()
            );
            let p = bin.join(name);
            fs::write(&p, script).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(dir.path().join("calls.log"), "").unwrap();
        Fakes { dir, bin }
    }

    /// PATH with the fakes first.
    pub fn path(&self) -> OsString {
        let mut p = self.bin.clone().into_os_string();
        p.push(":");
        p.push(std::env::var_os("PATH").unwrap_or_default());
        p
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// Each call, `name args…`, in order (`chroot` itself is not logged).
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The commands run through the fake `chroot` (`name` each), in order: what gpt ran
    /// of a tree's own programs.
    pub fn chrooted(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("chroot.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Forget the calls so far (and the per-command call counts `FAKE_FAIL=name:N` uses).
    pub fn reset_log(&self) {
        fs::write(self.log(), "").unwrap();
        let _ = fs::remove_file(self.dir.path().join("chroot.log"));
        for e in fs::read_dir(self.dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with("count-") {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }

    /// Run one fake inside `root`, as gpt would (`chroot ROOT argv…`).
    pub fn run(&self, root: &Path, argv: &[&str]) -> std::process::Output {
        Command::new("/bin/bash")
            .arg(self.bin.join("chroot"))
            .arg(root)
            .args(argv)
            .env("PATH", self.path())
            .env_remove("FAKE_FAIL")
            .env_remove("FAKE_SLEEP")
            .output()
            .unwrap()
    }

    /// [`Fakes::prime`] for a host without GRUB: the images, modules.dep, and each kernel's
    /// systemd-boot entry.
    pub fn prime_sdboot(&self, root: &Path) {
        let mut kernels: Vec<String> = fs::read_dir(root.join("lib/modules"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        kernels.sort();
        let mut cmds: Vec<Vec<String>> = Vec::new();
        for k in &kernels {
            cmds.push(vec!["depmod".into(), "-a".into(), k.clone()]);
        }
        cmds.push(
            ["update-initramfs", "-u", "-k", "all"]
                .map(String::from)
                .to_vec(),
        );
        for k in &kernels {
            cmds.push(vec![
                "kernel-install".into(),
                "add".into(),
                k.clone(),
                format!("/boot/vmlinuz-{k}"),
                format!("/boot/initrd.img-{k}"),
            ]);
        }
        for c in cmds {
            let argv: Vec<&str> = c.iter().map(String::as_str).collect();
            let out = self.run(root, &argv);
            assert!(
                out.status.success(),
                "priming with {argv:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.reset_log();
    }

    /// Give a host tree the grub.cfg, initramfs images and modules.dep its /etc implies, as
    /// on a real host, so that a later regeneration from the same /etc gives the same bytes.
    pub fn prime(&self, root: &Path) {
        let mut cmds: Vec<Vec<String>> = vec![
            vec!["update-grub".into()],
            vec![
                "update-initramfs".into(),
                "-u".into(),
                "-k".into(),
                "all".into(),
            ],
        ];
        let mut kernels: Vec<String> = fs::read_dir(root.join("lib/modules"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        kernels.sort();
        for k in kernels {
            cmds.push(vec!["depmod".into(), "-a".into(), k]);
        }
        for c in cmds {
            let argv: Vec<&str> = c.iter().map(String::as_str).collect();
            let out = self.run(root, &argv);
            assert!(
                out.status.success(),
                "priming with {argv:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.reset_log();
    }
}
