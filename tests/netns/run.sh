#!/usr/bin/env bash
# The multi-host suite: three hosts as network namespaces joined by veth
# pairs (IPv4 and IPv6), the real dctunnel binary on two of them, Debian's
# redis-server on the third, packets dropped with nftables for a true
# blackhole. See tests/netns/README.md.
#
#   client host  dctn-c  10.77.1.1  fd77:1::1   dctunnel, client mode
#      | veth
#   server host  dctn-s  10.77.1.2  fd77:1::2   dctunnel, server mode
#                        10.77.1.3             (a second address: a target to blackhole)
#                        10.77.2.1  fd77:2::1
#      | veth
#   backend host dctn-b  10.77.2.2  fd77:2::2   redis-server
#
# Usage (as root): tests/netns/run.sh [--bin PATH] [CHECK...]
#   PATH: the dctunnel binary (default: $CARGO_TARGET_DIR or target, debug).
#   CHECK: names of checks to run (default: all; see `checks` below).
# Prints "netns: N passed, M failed"; exits 1 if any failed, 2 if it could
# not set up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

bin=${CARGO_TARGET_DIR:-$top/target}/debug/dctunnel
if [ "${1:-}" = --bin ]; then
    bin=$(readlink -f "$2")
    shift 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests/netns/run.sh: must run as root (it creates network namespaces)" >&2
    exit 2
fi
[ -x "$bin" ] || { echo "no dctunnel binary at $bin (cargo build first)" >&2; exit 2; }
for tool in ip nft redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "tests/netns/run.sh needs $tool" >&2; exit 2; }
done

P=dctn
C=$P-c S=$P-s B=$P-b
work=$(mktemp -d /tmp/dctunnel-netns.XXXXXX)
pids=()

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    remove_namespaces
    if [ -n "${KEEP_NETNS_LOGS:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}

# Namespaces of this suite, left over by an earlier run or made by this one,
# with whatever still runs in them (only processes inside them: ours).
remove_namespaces() {
    local ns pid
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

# Starts a background process in a namespace, its output in $work/NAME.log.
start() {
    local name=$1 ns=$2; shift 2
    ip netns exec "$ns" "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}

# Waits up to $3 seconds (default 20) for a line matching regex $2 in log $1.
wait_log() {
    local file=$work/$1.log pattern=$2 limit=${3:-20} i
    for ((i = 0; i < limit * 10; i++)); do
        grep -Eq -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "    no line matching /$pattern/ in $1.log within ${limit}s; its end:" >&2
    tail -n 20 "$file" | sed 's/^/      /' >&2
    return 1
}

# --- Hosts ------------------------------------------------------------------
setup_hosts() {
    remove_namespaces
    local ns
    for ns in $C $S $B; do
        ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    ip link add $P-c0 netns $C type veth peer name $P-s0 netns $S
    ip link add $P-s1 netns $S type veth peer name $P-b0 netns $B
    in_ns $C ip addr add 10.77.1.1/24 dev $P-c0
    in_ns $C ip addr add fd77:1::1/64 dev $P-c0 nodad
    in_ns $S ip addr add 10.77.1.2/24 dev $P-s0
    in_ns $S ip addr add 10.77.1.3/24 dev $P-s0
    in_ns $S ip addr add fd77:1::2/64 dev $P-s0 nodad
    in_ns $S ip addr add 10.77.2.1/24 dev $P-s1
    in_ns $S ip addr add fd77:2::1/64 dev $P-s1 nodad
    in_ns $B ip addr add 10.77.2.2/24 dev $P-b0
    in_ns $B ip addr add fd77:2::2/64 dev $P-b0 nodad
    in_ns $C ip link set $P-c0 up
    in_ns $S ip link set $P-s0 up
    in_ns $S ip link set $P-s1 up
    in_ns $B ip link set $P-b0 up
}

# --- Certificates and configurations -----------------------------------------
setup_files() {
    "$bin" certs init-ca --dir "$work/ca" >/dev/null
    "$bin" certs issue --ca "$work/ca" --name server.netns --out "$work/certs" >/dev/null
    "$bin" certs issue --ca "$work/ca" --name client.netns --out "$work/certs" >/dev/null
    cat >"$work/server.toml" <<EOF
[daemon]
shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:9901"

[defaults]
ca = "$work/ca/ca.pem"
cert = "$work/certs/server.netns.pem"
key = "$work/certs/server.netns.key"
allow_peers = ["client.netns"]

[[service]]
name = "redis"
mode = "server"
# Both server addresses (10.77.1.3 is the failover check's first target).
listen = "0.0.0.0:7400"
connect = "10.77.2.2:6379"

[[service]]
name = "redis6"
mode = "server"
listen = "[fd77:1::2]:7401"
connect = "[fd77:2::2]:6379"

[[service]]
name = "deadpeer"
mode = "server"
listen = "10.77.1.2:7402"
connect = "10.77.2.2:6379"
dead_peer_timeout = "3s"
EOF
    cat >"$work/client.toml" <<EOF
[daemon]
shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:9900"

[defaults]
ca = "$work/ca/ca.pem"
cert = "$work/certs/client.netns.pem"
key = "$work/certs/client.netns.key"
server_name = "server.netns"

[[service]]
name = "redis4"
mode = "client"
listen = "127.0.0.1:6400"
connect = "10.77.1.2:7400"

[[service]]
name = "redis6"
mode = "client"
listen = "127.0.0.1:6401"
connect = "[fd77:1::2]:7401"

# Through the delay relay, which listens on this host.
[[service]]
name = "relayed"
mode = "client"
listen = "127.0.0.1:6402"
connect = "127.0.0.1:7500"

[[service]]
name = "deadpeer"
mode = "client"
listen = "127.0.0.1:6403"
connect = "10.77.1.2:7402"
dead_peer_timeout = "3s"

# 10.77.1.3 is the server host's second address, blackholed by the check.
[[service]]
name = "failover"
mode = "client"
listen = "127.0.0.1:6404"
connect = ["10.77.1.3:7400", "10.77.1.2:7400"]
connect_timeout = "1s"
EOF
}

# --- Processes ----------------------------------------------------------------
setup_processes() {
    start redis $B redis-server --bind 10.77.2.2 fd77:2::2 --port 6379 --save "" \
        --appendonly no --protected-mode no
    start server $S env DCTUNNEL_LOG=info,dctunnel=debug "$bin" run --config "$work/server.toml"
    start client $C env DCTUNNEL_LOG=info,dctunnel=debug "$bin" run --config "$work/client.toml"
    start relay $C python3 "$top/bench/delay_relay.py" --delay-ms 5 7500:10.77.1.2:7400
    wait_log redis "Ready to accept connections"
    wait_log server "ready"
    wait_log client "ready"
    wait_log relay "^ready"
}

# --- Blackholes -----------------------------------------------------------------
# Packets dropped in the client host's kernel, both ways: the peer neither
# answers nor resets, as when a WAN link goes dark.
blackhole_cmd() { # $1: table name, $2: match (nft expression for outgoing), $3: for incoming
    printf 'table inet %s {\n chain out { type filter hook output priority 0; policy accept; %s drop; }\n chain in { type filter hook input priority 0; policy accept; %s drop; }\n}\n' "$1" "$2" "$3" >"$work/$1.nft"
}
unblackhole() { in_ns $C nft delete table inet "$1" 2>/dev/null || true; }

metric() { # $1: admin address in the client host, $2: series with labels
    in_ns $C python3 "$here/helper.py" get "http://$1/metrics" | awk -v s="$2" '$1 == s {print $2}'
}

# --- Checks: one function each, on the shared hosts --------------------------------
check_redis_ipv4() {
    [ "$(in_ns $C redis-cli -p 6400 set netns-key v4 2>&1)" = OK ] || return 1
    [ "$(in_ns $C redis-cli -p 6400 get netns-key 2>&1)" = v4 ] || return 1
    # The server host saw the client host's certificate over IPv4.
    wait_log server 'peer[=":]+client.netns' 5
}

check_redis_ipv6() {
    [ "$(in_ns $C redis-cli -p 6401 set netns-key6 v6 2>&1)" = OK ] || return 1
    [ "$(in_ns $C redis-cli -p 6401 get netns-key6 2>&1)" = v6 ] || return 1
    # Both legs were IPv6: the client end reached the server host, the
    # server end the backend host, by their IPv6 addresses.
    wait_log client 'connection open.*remote=\[fd77:1::2\]:7401' 5 || return 1
    wait_log server 'connection open.*remote=\[fd77:2::2\]:6379' 5
}

check_delay_relay() {
    [ "$(in_ns $C redis-cli -p 6402 set relayed yes 2>&1)" = OK ] || return 1
    [ "$(in_ns $C redis-cli -p 6402 get relayed 2>&1)" = yes ] || return 1
    local direct relayed
    direct=$(in_ns $C python3 "$here/helper.py" ping 6400)
    relayed=$(in_ns $C python3 "$here/helper.py" ping 6402)
    echo "    new connection to PONG: ${direct} ms direct, ${relayed} ms through the 5 ms relay"
    # A lower bound only (a delay can only add): the relay is on the path.
    # A new connection there costs at least its TCP connect and one
    # request, two round trips of 10 ms.
    python3 -c "import sys; sys.exit(0 if float('$relayed') >= 20 else 1)"
}

# An open connection to a vanished peer is closed within a bound: 3 s set,
# asserted at 10x that (without TCP_USER_TIMEOUT a busy connection takes
# ~15 minutes, an idle one ~2 with the old keepalive, so this still fails
# when detection is missing).
dead_link() { # $1: idle or busy
    local mode=$1 table=dctn_dead_$1 out
    blackhole_cmd "$table" "tcp dport 7402" "tcp sport 7402"
    : >"$work/client.mark"
    local before_c before_s
    before_c=$(grep -c 'dead_peer_timeout' "$work/client.log" || true)
    before_s=$(grep -c 'dead_peer_timeout' "$work/server.log" || true)
    out=$(in_ns $C python3 "$here/helper.py" deadlink 6403 "$mode" 30 \
        ip netns exec $C nft -f "$work/$table.nft") || { echo "    $out"; unblackhole "$table"; return 1; }
    echo "    $out"
    # Both ends name the cause; the server end finds it through its own
    # keepalive or unacknowledged data.
    local ok=0
    wait_log client 'no acknowledgement within 3s \(dead_peer_timeout\)' 30 || ok=1
    wait_log server 'no acknowledgement within 3s \(dead_peer_timeout\)' 30 || ok=1
    [ "$(grep -c 'dead_peer_timeout' "$work/client.log")" -gt "$before_c" ] || ok=1
    [ "$(grep -c 'dead_peer_timeout' "$work/server.log")" -gt "$before_s" ] || ok=1
    unblackhole "$table"
    return $ok
}
check_dead_link_idle() { dead_link idle; }
check_dead_link_busy() { dead_link busy; }

# Two targets, the first blackholed (SYNs dropped): the first connection
# pays connect_timeout, the next ones skip it; the log and the metrics say
# so. Then the link comes back and a probe marks the target up.
check_failover_skips_dead_target() {
    local table=dctn_failover dead=10.77.1.3:7400 i ok=0
    blackhole_cmd "$table" "ip daddr 10.77.1.3" "ip saddr 10.77.1.3"
    in_ns $C nft -f "$work/$table.nft"
    for i in 1 2 3 4; do
        [ "$(in_ns $C redis-cli -p 6404 ping 2>&1)" = PONG ] || { echo "    ping $i failed"; ok=1; }
    done
    wait_log client "connect target marked down.*$dead|$dead.*connect target marked down" 5 || ok=1
    local up skips
    up=$(metric 127.0.0.1:9900 "dctunnel_target_up{service=\"failover\",target=\"$dead\"}")
    skips=$(metric 127.0.0.1:9900 "dctunnel_target_skips_total{service=\"failover\",target=\"$dead\"}")
    echo "    $dead: target_up=${up:-none}, skips=${skips:-none} after 4 connections"
    [ "$up" = 0 ] || ok=1
    [ "${skips:-0}" -ge 3 ] || ok=1
    # Only the first connection paid for it.
    [ "$(grep -c "connect target marked down" "$work/client.log")" = 1 ] || ok=1
    unblackhole "$table"
    # The link is back: a background probe (1 s, then doubling) connects
    # and marks the target up.
    wait_log client "connect target back up.*$dead|$dead.*connect target back up" 20 || ok=1
    up=$(metric 127.0.0.1:9900 "dctunnel_target_up{service=\"failover\",target=\"$dead\"}")
    echo "    after the blackhole: target_up=${up:-none}"
    [ "$up" = 1 ] || ok=1
    return $ok
}

checks=(redis_ipv4 redis_ipv6 delay_relay dead_link_idle dead_link_busy failover_skips_dead_target)

trap cleanup EXIT
trap 'exit 1' INT TERM
setup_hosts
setup_files
setup_processes

passed=0 failed=0 failures=()
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${checks[@]}")
for c in "${selected[@]}"; do
    started=$EPOCHREALTIME
    if "check_$c"; then
        passed=$((passed + 1)); verdict=ok
    else
        failed=$((failed + 1)); failures+=("$c"); verdict=FAILED
    fi
    printf 'netns: %-30s %s (%.1fs)\n' "$c" "$verdict" "$(python3 -c "print($EPOCHREALTIME - $started)")"
done
echo "netns: $passed passed, $failed failed${failures:+ (${failures[*]})}"
[ "$failed" = 0 ]
