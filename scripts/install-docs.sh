#!/usr/bin/env bash
# Installs buildbot's man pages and shell completions, generated from the command line's own
# definition (`buildbot generate-docs`), so they always match the binary.
#
#   bash scripts/install-docs.sh                 # PREFIX=/usr/local, BUILDBOT=buildbot on PATH
#   PREFIX=$HOME/.local BUILDBOT=target/release/buildbot bash scripts/install-docs.sh
set -euo pipefail

prefix="${PREFIX:-/usr/local}"
buildbot="${BUILDBOT:-buildbot}"
if ! command -v "$buildbot" >/dev/null 2>&1; then
    echo "install-docs: cannot run '$buildbot'; build it (cargo build --release) and set BUILDBOT=target/release/buildbot" >&2
    exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$buildbot" generate-docs --out "$out" >/dev/null

install -d "$prefix/share/man/man1"
install -m 644 "$out"/man1/*.1 "$prefix/share/man/man1/"
install -d "$prefix/share/bash-completion/completions" \
    "$prefix/share/zsh/site-functions" \
    "$prefix/share/fish/vendor_completions.d"
install -m 644 "$out/completions/buildbot.bash" "$prefix/share/bash-completion/completions/buildbot"
install -m 644 "$out/completions/_buildbot" "$prefix/share/zsh/site-functions/_buildbot"
install -m 644 "$out/completions/buildbot.fish" "$prefix/share/fish/vendor_completions.d/buildbot.fish"
echo "installed $(ls "$out"/man1 | wc -l) man pages and the bash, zsh and fish completions under $prefix/share"
