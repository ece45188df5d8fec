#!/usr/bin/env bash
# The gpt role, tested for real: bash contrib/ansible/tests/run.sh
#
# ansible-core and ansible-lint (pinned, from PyPI) in a venv (ANSIBLE_VENV, default
# target/ansible-venv); the role runs on localhost against copies of the bundled example host
# (examples/hosts/rocketlake-rtx2060) through gpt's --root, with gpt_install false (nothing is
# installed on this machine) and fake update-grub, update-initramfs, depmod, lsinitramfs and chroot
# first on PATH (tests/fakes/: they refuse to run outside a fake root, but lsinitramfs, which gpt
# runs itself on the image it opened inside the tree, and which only reads it). GPT_BIN: the gpt to
# run (default target/release/gpt, built if missing).
#
# Checks: check mode changes no byte and shows gpt's diff; the first run changes, the second
# reports changed=0 failed=0 (PLAY RECAP); a failing gpt check fails the play with gpt's
# reason; a refusal fails with gpt's error line, not a JSON error; gpt_state absent restores
# /etc byte for byte; a host whose IOMMU was off takes two passes; the package is copied into a
# fresh root-only folder (from install.yml); ansible-lint --offline with
# the production profile passes. Prints `ok - …` / `not ok - …` lines and `N passed, M failed`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ansible_dir=$(cd "$here/.." && pwd)
repo=$(cd "$ansible_dir/../.." && pwd)
cd "$repo"

ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
venv=${ANSIBLE_VENV:-$repo/target/ansible-venv}

note() { printf '# %s\n' "$*" >&2; }
die() { printf 'ansible tests/run.sh: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------------------
if ! "$venv/bin/python" -c 'import venv' 2>/dev/null ||
    [ "$("$venv/bin/python" -m pip show ansible-core 2>/dev/null | sed -n 's/^Version: //p')" != "$ANSIBLE_CORE_VERSION" ] ||
    [ "$("$venv/bin/python" -m pip show ansible-lint 2>/dev/null | sed -n 's/^Version: //p')" != "$ANSIBLE_LINT_VERSION" ]; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        note "installing python3-venv"
        "${sudo[@]}" apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-venv >&2
    fi
    note "creating $venv with ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION" >&2
fi
py=$venv/bin/python

gpt=${GPT_BIN:-target/release/gpt}
if [ -z "${GPT_BIN:-}" ] && [ ! -x "$gpt" ]; then
    note "building gpt (cargo build --release)"
    cargo build --locked --release --quiet >&2
fi
[ -x "$gpt" ] || die "GPT_BIN=$gpt is not an executable"
gpt=$(readlink -f "$gpt")

# --- the fake hosts -----------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PATH=$here/fakes:$PATH
export FAKE_LOG=$work/calls.log
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_ROLES_PATH=$ansible_dir/roles ANSIBLE_LOCAL_TEMP=$work/ansible-tmp
export ANSIBLE_HOME=$work/ansible-home ANSIBLE_STDOUT_CALLBACK=default
# The fakes must come first: the real update-grub must never be the one found.
[ "$(command -v update-grub)" = "$here/fakes/update-grub" ] || die "the fake update-grub is not first on PATH"

# host NAME: a copy of the example host whose grub.cfg, initramfs and modules.dep match its /etc,
# as on a real host.
host() {
    local h=$work/$1 c
    cp -a examples/hosts/rocketlake-rtx2060 "$h"
    for c in "update-grub" "update-initramfs -u -k all" "depmod -a 6.1.0-13-amd64"; do
        # shellcheck disable=SC2086
        chroot "$h" $c || die "priming $h with $c failed"
    done
    echo "$h"
}
# manifest DIR: every entry's type, mode and link target, and every file's sha256.
manifest() {
    (cd "$1" && find . -printf '%y %m %p -> %l\n' | LC_ALL=C sort &&
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}

# --- assertions ---------------------------------------------------------------------------------------
passed=0
failed=0
ok() { echo "ok - $*"; passed=$((passed + 1)); }
notok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { # check DESC CMD...
    local desc=$1
    shift
    why=
    if "$@"; then ok "$desc"; else notok "$desc${why:+ ($why)}"; fi
}
# play NAME EXTRA-VARS-JSON [ansible-playbook args]: run the test play; output in $work/NAME.log.
play() {
    local name=$1 vars=$2
    shift 2
    rc=0
    "$venv/bin/ansible-playbook" -i "$here/inventory.ini" "$here/converge.yml" \
        -e "ansible_python_interpreter=$py" -e "$vars" "$@" >"$work/$name.log" 2>&1 || rc=$?
    sed 's/^/    | /' "$work/$name.log" >&2
    cp "$work/$name.log" "$repo/target/ansible-$name.log" 2>/dev/null || true
}
# recap NAME KEY: a number from the PLAY RECAP line of localhost.
recap() { sed -n "s/^localhost *:.* $2=\([0-9]*\).*/\1/p" "$work/$1.log" | tail -n 1; }
recap_is() { # recap_is NAME changed=0 failed=0 ...
    local name=$1 kv got
    shift
    for kv in "$@"; do
        got=$(recap "$name" "${kv%%=*}")
        if [ "$got" != "${kv#*=}" ]; then
            why="PLAY RECAP: ${kv%%=*}=${got:-missing}, want ${kv#*=}"
            return 1
        fi
    done
}
changed_some() { # the recap of NAME has changed >= 1 and failed=0
    local c
    c=$(recap "$1" changed)
    [ "${c:-0}" -ge 1 ] && recap_is "$1" failed=0 && return 0
    why=${why:-PLAY RECAP: changed=${c:-missing}}
    return 1
}
log_has() { grep -qF -- "$2" "$work/$1.log" || { why="no '$2' in the output"; return 1; }; }
log_lacks() { ! grep -qF -- "$2" "$work/$1.log" || { why="'$2' in the output"; return 1; }; }
same_manifest() { # same_manifest FILE DIR
    manifest "$2" >"$work/manifest.now"
    diff -u "$1" "$work/manifest.now" >"$work/manifest.diff" && return 0
    why="differs: $(grep '^[-+][^-+]' "$work/manifest.diff" | head -n 4 | tr '\n' ' ')"
    return 1
}
grep_file() { grep -q -- "$1" "$2" || { why="no '$1' in $2"; return 1; }; }
no_commands() { [ ! -s "$FAKE_LOG" ] || { why="ran: $(tr '\n' ';' <"$FAKE_LOG")"; return 1; }; }

base() { # the variables of every run on host DIR, as JSON, plus any given
    printf '{"gpt_root": "%s", "gpt_binary": "%s", "gpt_install": false, "gpt_vendor": "nvidia"%s}' "$1" "$gpt" "${2:+, $2}"
}

# --- a host with its IOMMU on: check mode, converge twice, check, reset ---------------------------------
a=$(host a)
manifest "$a" >"$work/a.before"
manifest "$a/etc" >"$work/a-etc.before"

: >"$FAKE_LOG"
play check "$(base "$a")" --check --diff
check "check mode: the play succeeds" recap_is check failed=0
check "check mode: reports what it would change" changed_some check
check "check mode shows gpt's unified diff (+++ b/etc/default/grub, vfio-pci.ids=)" \
    eval 'log_has check "+++ b/etc/default/grub" && log_has check "+GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt intel_iommu=on vfio-pci.ids="'
check "check mode: not one byte, mode or link of the host tree changed" same_manifest "$work/a.before" "$a"
check "check mode ran no command (update-grub, ...)" no_commands

play nobinary "$(base "$a" '"gpt_binary": "/nonexistent/gpt"')" --check --diff
check "check mode before gpt is installed: a warning, not a failure (failed=0)" \
    eval 'recap_is nobinary failed=0 && log_has nobinary "is not installed yet (check mode)"'

play first "$(base "$a")"
check "first run changes (PLAY RECAP changed >= 1, failed=0)" changed_some first
check "first run: vfio-pci.ids= in /etc/default/grub and the regenerated grub.cfg" \
    eval 'grep_file "vfio-pci.ids=10de:1f08" "$a/etc/default/grub" && grep_file "vfio-pci.ids=10de:1f08" "$a/boot/grub/grub.cfg"'
check "first run: gpt's reboot_required notifies the reboot handler, which skips on a local connection" \
    eval 'grep -A 1 "^RUNNING HANDLER \[gpt : Reboot for gpt\]" "$work/first.log" | grep -q "^skipping: \[localhost\]"'
manifest "$a" >"$work/a.configured"

: >"$FAKE_LOG"
play second "$(base "$a")" --diff
check "second run: PLAY RECAP changed=0 failed=0" recap_is second changed=0 failed=0
check "second run: the tree is as the first run left it, and no command ran" \
    eval 'same_manifest "$work/a.configured" "$a" && no_commands'

play check2 "$(base "$a")" --check --diff
check "check mode on the configured host: changed=0 failed=0" recap_is check2 changed=0 failed=0

play gptcheck "$(base "$a" '"gpt_check": true')"
check "gpt_check: a failing gpt check fails the play (exit $rc, PLAY RECAP failed=1)" \
    eval '[ "$rc" != 0 ] && recap_is gptcheck failed=1'
check "... with gpt's reason (gpt check failed: ... reboot pending)" \
    eval 'log_has gptcheck "gpt check failed:" && log_has gptcheck "reboot pending"'

play refuse "$(base "$a" '"gpt_vendor": "amd"')"
check "a refusal fails the play (exit $rc, PLAY RECAP failed=1)" eval '[ "$rc" != 0 ] && recap_is refuse failed=1'
check "... with gpt's error line, not a JSON error" \
    eval 'log_has refuse "gpt full failed: error:" && log_lacks refuse "from_json" && log_lacks refuse "JSONDecodeError"'

play reset "$(base "$a" '"gpt_state": "absent"')" --diff
check "gpt_state absent: changes (PLAY RECAP changed >= 1, failed=0)" changed_some reset
check "gpt_state absent: /etc is byte-identical to before the first run" same_manifest "$work/a-etc.before" "$a/etc"
check "gpt_state absent: grub.cfg has no vfio-pci.ids= any more" eval '! grep -q vfio-pci.ids= "$a/boot/grub/grub.cfg"'
play reset2 "$(base "$a" '"gpt_state": "absent"')"
check "gpt_state absent again: changed=0 failed=0" recap_is reset2 changed=0 failed=0

# --- a host whose IOMMU is off: two passes, a reboot between ------------------------------------------
b=$(host b)
mkdir "$work/b-groups"
mv "$b/sys/kernel/iommu_groups" "$work/b-groups/"
mkdir "$b/sys/kernel/iommu_groups"
play iommu1 "$(base "$b")"
check "IOMMU off, first pass: changes (only the IOMMU arguments)" \
    eval 'changed_some iommu1 && grep_file "intel_iommu=on" "$b/etc/default/grub" && ! grep -q vfio-pci.ids= "$b/etc/default/grub"'
check "... and says to reboot and run the play again" log_has iommu1 "Reboot the host and run this play again"
# The reboot: the kernel comes up with the arguments, and with them the IOMMU groups.
rmdir "$b/sys/kernel/iommu_groups"
mv "$work/b-groups/iommu_groups" "$b/sys/kernel/"
sed -i 's/$/ iommu=pt intel_iommu=on/' "$b/proc/cmdline"
play iommu2 "$(base "$b")"
check "IOMMU on after the reboot, second pass: changes (vfio-pci.ids= now)" \
    eval 'changed_some iommu2 && grep_file "vfio-pci.ids=10de:1f08" "$b/etc/default/grub"'
play iommu3 "$(base "$b")"
check "a third run: changed=0 failed=0" recap_is iommu3 changed=0 failed=0

# --- the package's copy -------------------------------------------------------------------------------
# Not run here (it would install a package on this machine): checked from the task file.
check "install.yml copies the .deb into a fresh root-only folder (tempfile, 0700) and removes it" \
    eval '"$py" "$here/install_copy.py" "$ansible_dir/roles/gpt/tasks/install.yml" 2>"$work/install_copy.err" || { why=$(cat "$work/install_copy.err"); false; }'

# --- ansible-lint -------------------------------------------------------------------------------------
# --offline: without it ansible-lint installs collections and checks for its own updates online.
rc=0
(cd "$ansible_dir" && PATH=$venv/bin:$PATH "$venv/bin/ansible-lint" --offline --profile production roles/gpt playbook.yml tests/converge.yml) >"$work/lint.log" 2>&1 || rc=$?
sed 's/^/    | /' "$work/lint.log" >&2
check "ansible-lint --offline --profile production passes (exit $rc)" test "$rc" = 0

echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
