#!/usr/bin/env bash
# Build gpt's Debian package: bash scripts/deb.sh [--lint]
#
# 1. cargo build --release (skipped when GPT_BIN names an already built binary to package),
# 2. the manual pages (gpt.1, gpt-COMMAND.1) and the bash, zsh and fish completions generated
#    by that binary into target/deb-assets/ — outside target/release, which cargo-deb treats as
#    build products and would not gzip (lintian: uncompressed-manual-page),
# 3. cargo deb --no-build (cargo-deb is installed at a pinned version when missing; it needs a
#    C compiler, and dpkg-dev's dpkg-shlibdeps for `Depends: $auto`),
# 4. with --lint: the changelog's version must be the package's, postrm keeps the journal of a
#    configured host (tried on temp trees through DPKG_ROOT), and lintian --fail-on error.
#
# Prints the path of the .deb on stdout (last line); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
lint=no
for a in "$@"; do
    case $a in
    --lint) lint=yes ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deb.sh: unknown argument '$a'" >&2; exit 2 ;;
    esac
done
note() { printf '[deb] %s\n' "$*" >&2; }
die() { printf 'deb.sh: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------------------
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
missing=()
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
[ "$lint" = no ] || command -v lintian >/dev/null || missing+=(lintian)
if [ ${#missing[@]} -gt 0 ]; then
    note "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
    note "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION" >&2
fi

# --- the binary -------------------------------------------------------------------------------------
target=${CARGO_TARGET_DIR:-target}
release=$target/release
if [ -n "${GPT_BIN:-}" ]; then
    [ -x "$GPT_BIN" ] || die "GPT_BIN=$GPT_BIN is not an executable"
    [ "$(readlink -f "$GPT_BIN")" = "$(readlink -f "$release/gpt")" ] ||
        die "cargo-deb packages $release/gpt; GPT_BIN must be that file"
else
    note "cargo build --locked --release"
    cargo build --locked --release --quiet >&2
fi
gpt=$release/gpt

# --- generated assets -------------------------------------------------------------------------------
# The paths are the ones [package.metadata.deb] assets in Cargo.toml names.
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$gpt" man >"$assets/man/gpt.1"
# One page per command that `gpt --help` lists (clap's own `help` has none).
commands=$("$gpt" --help | awk '/^Commands:/ { on = 1; next } on && /^$/ { exit } on { print $1 }' | grep -vx help)
[ -n "$commands" ] || die "found no commands in gpt --help"
for c in $commands; do
    "$gpt" man "$c" >"$assets/man/gpt-$c.1"
done
"$gpt" completions bash >"$assets/completions/gpt.bash"
"$gpt" completions zsh >"$assets/completions/_gpt"
"$gpt" completions fish >"$assets/completions/gpt.fish"
for f in "$assets"/man/* "$assets"/completions/*; do
    [ -s "$f" ] || die "$f is empty"
done
note "generated $(ls "$assets/man" | wc -l) manual pages and 3 completion scripts in $assets"

# --- the package ------------------------------------------------------------------------------------
deb=$(cargo deb --locked --no-build | tail -n 1)
[ -f "$deb" ] || die "cargo deb did not print the path of a .deb (got '$deb'); run \`cargo deb --no-build\` to see why"
version=$(dpkg-deb -f "$deb" Version)
note "built $deb (version $version)"

if [ "$lint" = yes ]; then
    changelog=$(dpkg-parsechangelog -l pkg/deb/changelog -S Version)
    [ "$changelog" = "$version" ] ||
        die "pkg/deb/changelog is at version $changelog but the package is $version: add a changelog entry for $version"
    note "changelog version $changelog matches the package"
    # postrm on test trees (DPKG_ROOT), never on this machine's /var/lib/gpt.
    t=$(mktemp -d)
    trap 'rm -rf "$t"' EXIT
    mkdir -p "$t/configured/var/lib/gpt" "$t/reset/var/lib/gpt/originals"
    echo '{"version":1}' >"$t/configured/var/lib/gpt/state.json"
    for action in remove purge; do
        DPKG_ROOT=$t/configured sh pkg/deb/postrm "$action" 2>"$t/err" || die "postrm $action failed: $(cat "$t/err")"
        [ -f "$t/configured/var/lib/gpt/state.json" ] || die "postrm $action deleted the journal of a configured host"
        grep -q "/var/lib/gpt" "$t/err" || die "postrm $action kept the journal without saying why"
    done
    DPKG_ROOT=$t/reset sh pkg/deb/postrm remove || die "postrm remove failed with no journal"
    [ -d "$t/reset/var/lib/gpt" ] || die "postrm remove deleted /var/lib/gpt"
    DPKG_ROOT=$t/reset sh pkg/deb/postrm purge || die "postrm purge failed with no journal"
    [ ! -e "$t/reset/var/lib/gpt" ] || die "postrm purge left /var/lib/gpt with no journal in it"
    note "postrm: remove keeps the journal; purge keeps it (and says why) only when a host is configured"
    note "lintian --fail-on error (warnings shown, and explained in README.md)"
    # --tag-display-limit 0: every instance of a tag, so that a new one cannot hide.
    lintian --fail-on error --tag-display-limit 0 "$deb" >&2 || die "lintian found errors in $deb"
fi
echo "$deb"
