#!/bin/sh
# Checks the units in systemd/ with `systemd-analyze verify`, failing on any
# complaint (unknown keys are only warnings to systemd, errors to us).
# The binary path in the units is pointed at a built dctunnel first, since
# verify insists that the ExecStart command exists.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${DCTUNNEL:-$here/target/debug/dctunnel}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for unit in "$here"/systemd/*.service; do
    name=$(basename "$unit")
    case "$name" in
    *@.service) inst="${name%@.service}@example.service" ;;
    *) inst="$name" ;;
    esac
    sed -E "s#/usr/(local/)?bin/dctunnel#$bin#g" "$unit" >"$tmp/$inst"
    out=$(systemd-analyze verify --man=no "$tmp/$inst" 2>&1) || status=1
    if [ -n "$out" ]; then
        echo "$out" >&2
        status=1
    fi
done
[ $status -eq 0 ] && echo "systemd units: verified"
exit $status
