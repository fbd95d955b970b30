#!/usr/bin/env bash
# Builds the Debian package of dctunnel and checks it with lintian.
# Usage: scripts/build-deb.sh        (as root, or with sudo available if
#                                     lintian or dpkg-dev must be installed)
# Only the path of the .deb goes to stdout, as its last line:
#   deb=$(scripts/build-deb.sh)
# Everything else (cargo, cargo-deb, lintian) goes to stderr. Fails if the
# build fails or lintian reports an error (E:); warnings are shown only.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
if ((${#need[@]})); then
    echo "installing: ${need[*]}" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing: cargo-deb" >&2
    cargo install cargo-deb --locked >&2
fi

# The target dir as cargo (and so cargo-deb) sees it: CARGO_TARGET_DIR, a
# .cargo/config build.target-dir, or ./target.
target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target" ] || {
    echo "build-deb: cannot find cargo's target directory" >&2
    exit 1
}

cargo build --release --locked >&2

# Man pages and completions, made from the command-line definition by the
# binary just built. They go in release/assets/ because cargo-deb reads the
# `target/release/` prefix of an asset as the real target dir's release/;
# a path like target/assets/ would be taken literally, relative to the crate.
assets=$target/release/assets
rm -rf "$assets"
"$target/release/dctunnel" generate-assets --out "$assets"
# cargo-deb compresses man pages only when they are not build products;
# -n leaves out name and time, so the same input gives the same bytes.
gzip -9n "$assets"/*.8

# Package timestamps from the last commit, not from the clock.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
deb=$(cargo deb --no-build)
deb=$(printf '%s\n' "$deb" | tail -n 1)
[ -f "$deb" ] || {
    echo "build-deb: cargo deb did not name a package file: $deb" >&2
    exit 1
}

# lintian exits 2 when a tag of a --fail-on severity (error, by default)
# is found, 1 when lintian itself fails, 0 otherwise: warnings pass.
status=0
lintian --info --fail-on error "$deb" >&2 || status=$?
if [ $status -ne 0 ]; then
    if [ $status -eq 2 ]; then
        echo "build-deb: lintian found errors (E:) in $deb" >&2
    else
        echo "build-deb: lintian failed (exit $status) on $deb" >&2
    fi
    exit 1
fi
echo "$deb"
