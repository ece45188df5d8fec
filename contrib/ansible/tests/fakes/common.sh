# Shared by the fake commands of the role test (a shell port of tests/support/fakes.rs).
# gpt runs a command under --root ROOT as `chroot ROOT cmd args`; the fake chroot runs the fake
# cmd with FAKE_ROOT=ROOT, and every other fake refuses to run without FAKE_ROOT, so the test
# can never touch this machine's /boot. Each call appends `name args` to $FAKE_LOG when set.
set -u
fake_begin() {
    local me=$1
    shift
    [ -z "${FAKE_LOG:-}" ] || printf '%s\n' "$me${*:+ $*}" >>"$FAKE_LOG"
    if [ -z "${FAKE_ROOT:-}" ]; then
        echo "fake $me: not called through the fake chroot; refusing to touch the real /" >&2
        exit 99
    fi
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
