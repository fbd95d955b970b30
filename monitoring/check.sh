#!/bin/sh
# Checks the Prometheus alert rules: syntax (`promtool check rules`) and
# behaviour (`promtool test rules` on alerts_test.yml).
# promtool comes with Debian's `prometheus` package.
# The dashboard and the rules are also checked against the metrics the
# daemon really exports by `cargo test --test admin`.
set -eu
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found; install it with: apt-get install prometheus" >&2
    exit 2
fi
promtool check rules alerts.yml
promtool test rules alerts_test.yml
