#!/usr/bin/env bash
# Runs every test of dctunnel, after installing what the tests use from
# Debian (redis-server, redis-cli, systemd-analyze, promtool, stunnel4,
# haproxy, nftables for the network-namespace suite; for the
# booted-systemd suite mmdebstrap, systemd-container, lintian, dpkg-dev)
# and cargo-deb from crates.io.
# Usage: ./test.sh            (as root: the last part boots a Debian 12
#                              container; as another user it is skipped
#                              with a message, except under CI=true)
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v promtool >/dev/null || need+=(prometheus)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v haproxy >/dev/null || need+=(haproxy)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# git does not keep file modes: the example keys come back 0644 in a fresh
# clone, and dctunnel rightly refuses keys others can read.
certs-example/regenerate.sh --fix-modes

cargo build --all-targets
scripts/verify-systemd.sh
if [ -x monitoring/check.sh ]; then monitoring/check.sh; fi
for f in config/*.toml; do
    target/debug/dctunnel check --config "$f" >/dev/null || {
        echo "config check failed: $f" >&2
        exit 1
    }
done
echo "config/*.toml: all pass dctunnel check"
cargo test

# Three hosts in network namespaces (needs root), then the Debian package
# and the booted-systemd suite installing it.
if [ "$(id -u)" = 0 ]; then
    tests/netns/run.sh
    deb=$(scripts/build-deb.sh | tail -n 1)
    tests/systemd/run.sh "$deb"
elif [ "${CI:-}" = true ]; then
    echo "the network-namespace and booted-systemd suites need root" >&2
    exit 1
else
    echo "SKIPPED: network-namespace suite, package build and booted-systemd suite (run ./test.sh as root)"
fi
