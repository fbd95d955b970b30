#!/usr/bin/env bash
# The booted-systemd suite: Debian 12 with its real systemd 252, booted in a
# container, with dctunnel installed from its .deb, driven as an operator
# would (systemctl, journalctl, dctunnel status, dpkg), keys handed over as
# systemd credentials exactly as the README says.
#
# Usage (as root): tests/systemd/run.sh [path/to/dctunnel_*.deb]
#   Without an argument the package is built with scripts/build-deb.sh.
#   The root file system is cached in $DCTUNNEL_ROOTFS_CACHE
#   (/var/cache/dctunnel-tests by default); each run boots it with a
#   throw-away overlay (--volatile=overlay), so runs never change it.
# Needs: mmdebstrap, systemd-container (installed with apt-get if missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top"

if [ "$(id -u)" != 0 ]; then
    echo "tests/systemd/run.sh: must run as root (it boots a container)" >&2
    exit 2
fi
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

deb=${1:-}
if [ -z "$deb" ]; then
    deb=$(scripts/build-deb.sh | tail -n 1)
fi
deb=$(readlink -f "$deb")
[ -f "$deb" ] || { echo "no package at $deb" >&2; exit 2; }

# --- The root file system, built once and cached --------------------------
packages=systemd,systemd-sysv,dbus,redis-server,redis-tools,adduser,procps,iproute2
cache=${DCTUNNEL_ROOTFS_CACHE:-/var/cache/dctunnel-tests}
rootfs=$cache/bookworm-$(echo "$packages" | sha256sum | cut -c1-12)
if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
    echo "building the Debian 12 root file system in $rootfs (once)"
    mkdir -p "$cache"
    rm -rf "$rootfs.new"
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$rootfs.new" >/dev/null
    rm -rf "$rootfs"
    mv "$rootfs.new" "$rootfs"
fi

# --- Files for the container: the package, certificates, configurations --
work=$(mktemp -d /tmp/dctunnel-systemd.XXXXXX)
chmod 755 "$work"
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn powers the container off
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
cp "$deb" "$work/"
bin=$work/bin
mkdir -p "$bin"
dpkg-deb -x "$deb" "$bin"
dct=$bin/usr/bin/dctunnel
"$dct" certs init-ca --dir "$work/ca" --name "systemd test CA" >/dev/null
"$dct" certs issue --ca "$work/ca" --name off.test --out "$work/hosts" >/dev/null

service_block() { # name mode listen connect
    cat <<TOML

[[service]]
name = "$1"
mode = "$2"
listen = "$3"
connect = "$4"
ca = "/etc/dctunnel/ca.pem"
cert = "/etc/dctunnel/off.test.pem"
key = "\${CREDENTIALS_DIRECTORY}/off.key"
TOML
    if [ "$2" = server ]; then echo 'allow_peers = ["off.test"]'; else echo 'server_name = "off.test"'; fi
}
{
    printf '[daemon]\nshutdown_timeout = "10s"\n\n[admin]\nlisten = "127.0.0.1:9815"\n'
    service_block redis-tls server 127.0.0.1:7001 127.0.0.1:6379
    service_block redis client 127.0.0.1:7000 127.0.0.1:7001
} >"$work/off.toml"
{ cat "$work/off.toml"; service_block redis-second client 127.0.0.1:7002 127.0.0.1:7001; } >"$work/off-added.toml"
sed 's/mode = "client"/mode = "clinet"/' "$work/off-added.toml" >"$work/off-bad.toml"

# --- Boot -------------------------------------------------------------------
systemd-nspawn -q -b --register=no --keep-unit --private-network --volatile=overlay \
    -D "$rootfs" --bind-ro="$work:/mnt/t" >"$work/console.log" 2>&1 &
nspawn_pid=$!
# The container's init is the child of nspawn that runs systemd (nspawn
# may have other, short-lived children first).
pid=
for _ in $(seq 400); do
    for child in $(pgrep -P "$nspawn_pid" || true); do
        if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then
            pid=$child
            break 2
        fi
    done
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.05
done
[ -n "$pid" ] || { echo "the container did not start:"; cat "$work/console.log"; exit 1; }

# A command inside the container, with the container's own environment.
inside() { nsenter -t "$pid" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# A host program in the container's network only (Python for the clients).
net() { nsenter -t "$pid" -n "$@"; }
for _ in $(seq 300); do inside systemctl show -P Version >/dev/null 2>&1 && break; sleep 0.1; done
state=$(inside timeout 60 systemctl is-system-running --wait || true)
echo "container booted: $state ($(inside systemctl --version | head -n 1))"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
check() { # name command...: passes when the command exits 0
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name"; printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'; fi
}
journal() { inside journalctl -q -o cat -u dctunnel@off --no-pager; }
main_pid() { inside systemctl show -P MainPID dctunnel@off; }
wait_until() { # seconds command...: polls the command every 0.1 s
    local n=$(($1 * 10))
    shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# --- The package ----------------------------------------------------------
check "apt-get install ./dctunnel_*.deb" inside apt-get install -y -q "/mnt/t/$(basename "$deb")"
check "the package made the dctunnel system user" inside sh -c 'id -u dctunnel && [ "$(getent passwd dctunnel | cut -d: -f7)" = /usr/sbin/nologin ]'
check "/etc/dctunnel/private is 0700 root" inside sh -c '[ "$(stat -c %a:%U /etc/dctunnel/private)" = 700:root ]'
check "man page dctunnel(8) installed" inside test -s /usr/share/man/man8/dctunnel.8.gz
check "bash and zsh completions installed" inside sh -c 'test -s /usr/share/bash-completion/completions/dctunnel && test -s /usr/share/zsh/vendor-completions/_dctunnel'
check "no example configuration made live" inside sh -c '! ls /etc/dctunnel/*.toml'

# --- The operator's setup (README, two-host guide step 2) -----------------
inside install -m 644 /mnt/t/ca/ca.pem /mnt/t/hosts/off.test.pem /etc/dctunnel/
inside install -m 600 /mnt/t/hosts/off.test.key /etc/dctunnel/private/off.key
inside install -m 644 /mnt/t/off.toml /etc/dctunnel/off.toml
check "systemctl start (ready once listening)" inside systemctl start dctunnel@off
check "unit active" inside systemctl is-active dctunnel@off
check "traffic: SET through the tunnel" sh -c "[ \"\$(nsenter -t $pid -a redis-cli -p 7000 SET product:1 Nutella)\" = OK ]"
check "traffic: GET through the tunnel" sh -c "[ \"\$(nsenter -t $pid -a redis-cli -p 7000 GET product:1)\" = Nutella ]"

# A connection held open across both reloads.
coproc HOLD { net python3 -u "$here/client.py" hold 7000; }
held() { # word: sends ECHO word on the held connection, checks the reply
    echo "$1" >&"${HOLD[1]}"
    local reply
    read -r -t 10 reply <&"${HOLD[0]}" && [ "$reply" = "$1" ]
}
check "held connection answers" held first

# --- Reload with a good file -------------------------------------------------
inside install -m 644 /mnt/t/off-added.toml /etc/dctunnel/off.toml
check "systemctl reload, good file: exit 0" inside systemctl reload dctunnel@off
check "the new service answers" sh -c "[ \"\$(nsenter -t $pid -a redis-cli -p 7002 GET product:1)\" = Nutella ]"
check "held connection still carries data after the good reload" held second
check "journal tells what the reload changed" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@off | grep -q 'reload done: 3 service(s); redis-second: added'"

# --- Reload with a bad file ------------------------------------------------
inside install -m 644 /mnt/t/off-bad.toml /etc/dctunnel/off.toml
if out=$(inside systemctl reload dctunnel@off 2>&1); then
    fail "systemctl reload, bad file: exit non-zero"
else
    ok "systemctl reload, bad file: exit non-zero"
    printf '%s\n' "$out" | head -n 2 | sed 's/^/    systemctl said: /'
    inside journalctl -q -o cat -u dctunnel@off | grep -A2 '^dctunnel reload: ' | sed 's/^/    journal: /'
fi
check "journal gives the reason" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@off | grep -A3 'reload refused, running configuration kept' | grep -q 'unknown variant .clinet.'"
check "old configuration still serving (new connection on each service)" sh -c "[ \"\$(nsenter -t $pid -a redis-cli -p 7002 PING)\" = PONG ] && [ \"\$(nsenter -t $pid -a redis-cli -p 7000 PING)\" = PONG ]"
check "held connection still carries data after the bad reload" held third
check "systemctl status shows the STATUS= line" sh -c "nsenter -t $pid -a systemctl status dctunnel@off --no-pager | grep -q 'Status: \"running 3 service(s); last reload FAILED, previous configuration kept\"'"
check "dctunnel status as root" sh -c "nsenter -t $pid -a dctunnel status --config /etc/dctunnel/off.toml | grep -q redis-second"

# --- Reload that removes a service: its port really closes ------------------
inside install -m 644 /mnt/t/off.toml /etc/dctunnel/off.toml
check "systemctl reload removing a service: exit 0" inside systemctl reload dctunnel@off
check "the removed service's port is closed (not kept by systemd)" sh -c "! nsenter -t $pid -n python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 7002), timeout=5)'"
exec {HOLD[1]}>&- || true
wait "$HOLD_PID" 2>/dev/null || true

# --- Restart: the listening sockets stay open -------------------------------
# The loop speaks mutual TLS to the server-mode port, as the remote end of
# a tunnel does. (Through the client-mode entrance of the same process, a
# connection caught between its two ends at the moment of the stop waits
# for the old process's drain: the old server side no longer accepts.)
restart_under_load() { # prints the client loop's JSON summary
    local stop=$work/stop-loop
    rm -f "$stop"
    net python3 -u "$here/client.py" loop 7001 "$stop" \
        "$work/ca/ca.pem" "$work/hosts/off.test.pem" "$work/hosts/off.test.key" off.test >"$work/loop.json" &
    local loop_pid=$!
    sleep 1
    inside systemctl restart dctunnel@off
    sleep 1
    touch "$stop"
    wait "$loop_pid"
    cat "$work/loop.json"
}
before=$(main_pid)
summary=$(restart_under_load)
after=$(main_pid)
echo "    restart under a connection loop: $summary"
check "systemctl restart replaced the process" test "$before" != "$after"
check "restart: zero refused, zero failed connections" python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['refused']==0 and d['other']==0 and d['ok']>0 else 1)" "$summary"
check "restart: the new process took the sockets from systemd" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@off _PID=$after | grep -q 'listening sockets kept open by systemd across the restart'"

# The same loop without the descriptor store, for comparison (reported only).
inside mkdir -p /run/systemd/system/dctunnel@off.service.d
inside sh -c 'printf "[Service]\nFileDescriptorStoreMax=0\n" >/run/systemd/system/dctunnel@off.service.d/nostore.conf'
inside systemctl daemon-reload
inside systemctl restart dctunnel@off
echo "    restart without the descriptor store (comparison): $(restart_under_load)"
inside rm /run/systemd/system/dctunnel@off.service.d/nostore.conf
inside systemctl daemon-reload
inside systemctl restart dctunnel@off

# --- The watchdog: a daemon that stops pinging is restarted -----------------
inside sh -c 'printf "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n" >/run/systemd/system/dctunnel@off.service.d/watchdog.conf'
inside systemctl daemon-reload
inside systemctl restart dctunnel@off
frozen=$(main_pid)
restarts=$(inside systemctl show -P NRestarts dctunnel@off)
inside kill -STOP "$frozen"
new_pid() { p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$frozen" ] && inside systemctl is-active -q dctunnel@off; }
check "watchdog: a frozen daemon is killed and restarted" wait_until 30 new_pid
check "watchdog: journal says why" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@off | grep -qi 'watchdog timeout'"
check "watchdog: NRestarts went up" test "$(inside systemctl show -P NRestarts dctunnel@off)" -gt "$restarts"
check "traffic after the watchdog restart" sh -c "[ \"\$(nsenter -t $pid -a redis-cli -p 7000 GET product:1)\" = Nutella ]"
inside rm /run/systemd/system/dctunnel@off.service.d/watchdog.conf
inside systemctl daemon-reload
inside systemctl restart dctunnel@off

# --- Stop: drain, then exit 0 -------------------------------------------------
coproc HOLD { net python3 -u "$here/client.py" hold 7000; }
check "held connection before stop" held before-stop
inside systemctl stop dctunnel@off &
stop_pid=$!
draining() { inside journalctl -q -o cat -u dctunnel@off | grep -q 'waiting for open connections to finish'; }
check "stop: the daemon drains open connections" wait_until 10 draining
check "stop: a held connection carries data while draining" held during-drain
exec {HOLD[1]}>&- || true
wait "$HOLD_PID" 2>/dev/null || true
wait "$stop_pid"
check "stop: exited 0, unit inactive (not failed)" sh -c "[ \"\$(nsenter -t $pid -a systemctl show -P ExecMainStatus dctunnel@off)\" = 0 ] && [ \"\$(nsenter -t $pid -a systemctl is-active dctunnel@off)\" = inactive ]"

# --- The online CA under the unit's sandbox (docs/online-ca.md) -----------
# Set up as the doc says: the CA folder in the instance's StateDirectory,
# owned by the dctunnel user; the token made by root, as an admin would.
ca_home=/var/lib/dctunnel/ca
as_dctunnel() { inside runuser -u dctunnel -- "$@"; }
inside install -d -o dctunnel -g dctunnel -m 0700 "$ca_home"
as_dctunnel dctunnel certs init-ca --dir "$ca_home/ca" --name "online test CA" >/dev/null
as_dctunnel dctunnel certs issue --ca "$ca_home/ca" --name ca.test --ip 127.0.0.1 --out "$ca_home" >/dev/null
as_dctunnel dctunnel certs issue --ca "$ca_home/ca" --name h1.test --out "$ca_home/hosts" >/dev/null
inside sh -c "printf '[[service]]\nname = \"ca\"\nmode = \"ca\"\nlisten = \"127.0.0.1:7443\"\ncert = \"$ca_home/ca.test.pem\"\nkey = \"$ca_home/ca.test.key\"\nca_dir = \"$ca_home/ca\"\nlifetime = \"7d\"\n' >/etc/dctunnel/ca.toml"
# This instance has no key in /etc/dctunnel/private: an empty
# LoadCredential= clears the unit's list.
inside mkdir -p /run/systemd/system/dctunnel@ca.service.d
inside sh -c 'printf "[Service]\nLoadCredential=\n" >/run/systemd/system/dctunnel@ca.service.d/nokey.conf'
inside systemctl daemon-reload
check "online CA: systemctl start dctunnel@ca" inside systemctl start dctunnel@ca
croot=/proc/$pid/root
inside dctunnel certs renew --cert "$ca_home/hosts/h1.test.pem" --out /root/renew >/dev/null
renewal=$(net python3 "$here/client.py" post 7443 /v1/renew "$croot$ca_home/ca/ca.pem" "$croot/root/renew/h1.test.csr" \
    "$croot$ca_home/hosts/h1.test.pem" "$croot$ca_home/hosts/h1.test.key" 2>&1 || true)
check "online CA: a renewal is signed under ProtectSystem=strict (200)" test "$(printf '%s\n' "$renewal" | head -n 1)" = 200
check "online CA: issued.log and renewed/ written in the StateDirectory" inside sh -c "grep -q 'renewal of certificate' $ca_home/ca/issued.log && ls $ca_home/ca/renewed | grep -q ."
token=$(inside dctunnel certs token --ca "$ca_home/ca" --name new.test --ttl 5m 2>/dev/null)
inside dctunnel certs request --name new.test --out /root/enrol >/dev/null
enrol() { net python3 "$here/client.py" post 7443 /v1/enrol "$croot$ca_home/ca/ca.pem" "$croot/root/enrol/new.test.csr" --token "$token" 2>&1 | head -n 1; }
check "online CA: a token made by root enrols a host (200)" test "$(enrol)" = 200
check "online CA: the same token again is refused (403)" test "$(enrol)" = 403
check "online CA: the journal names each issuance" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@ca | grep -q 'online CA: certificate issued (enrolment)'"

# --- A host that renews by itself under the unit's sandbox (README, -------
# "Renewal that runs itself (a host)"): enrolled into its StateDirectory as
# the dctunnel user with a token; then given a certificate already two
# thirds through its lifetime, which the daemon renews and replaces where
# ProtectSystem=strict lets it write. Files under /etc are refused at start.
h_home=/var/lib/dctunnel/h1
inside install -d -o dctunnel -g dctunnel -m 0700 "$h_home"
token=$(inside dctunnel certs token --ca "$ca_home/ca" --name h2.test --ip 127.0.0.1 --ttl 5m 2>/dev/null)
check "renewal: certs enrol as the dctunnel user, into the StateDirectory" inside runuser -u dctunnel -- \
    env DCTUNNEL_TOKEN="$token" dctunnel certs enrol --ca-service 127.0.0.1:7443 --server-name ca.test \
    --name h2.test --ip 127.0.0.1 --out "$h_home"
check "renewal: the enrolled key is 0600, owned by dctunnel" inside sh -c "[ \"\$(stat -c %a:%U $h_home/h2.test.key)\" = 600:dctunnel ]"
# A certificate for the same names, due for renewal (day 21 of 30).
python3 - "$croot$ca_home/ca/ca.pem" "$croot$ca_home/ca/ca.key" "$croot$h_home" <<'PY'
import datetime, ipaddress, os, sys
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
ca_pem, ca_key_pem, out = sys.argv[1:4]
ca = x509.load_pem_x509_certificate(open(ca_pem, "rb").read())
ca_key = serialization.load_pem_private_key(open(ca_key_pem, "rb").read(), None)
key = ec.generate_private_key(ec.SECP256R1())
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h2.test")]))
    .issuer_name(ca.subject)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=21))
    .not_valid_after(now + datetime.timedelta(days=9))
    .add_extension(x509.SubjectAlternativeName(
        [x509.DNSName("h2.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    .add_extension(x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    .sign(ca_key, hashes.SHA256())
)
fd = os.open(out + "/h2.test.key.new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()))
os.close(fd)
os.replace(out + "/h2.test.key.new", out + "/h2.test.key")
open(out + "/h2.test.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
PY
inside chown dctunnel:dctunnel "$h_home/h2.test.key" "$h_home/h2.test.pem"
renewal_config() { # folder
    printf '[[service]]\nname = "tls"\nmode = "server"\nlisten = "127.0.0.1:%s"\nconnect = "127.0.0.1:6379"\n' "$2"
    printf 'ca = "%s/ca.pem"\ncert = "%s/h2.test.pem"\nkey = "%s/h2.test.key"\nallow_peers = ["*"]\n\n' "$1" "$1" "$1"
    printf '[renewal]\nca_service = "127.0.0.1:7443"\nserver_name = "ca.test"\n'
    printf 'cert = "%s/h2.test.pem"\nkey = "%s/h2.test.key"\nca = "%s/ca.pem"\n' "$1" "$1" "$1"
}
renewal_config "$h_home" 7601 >"$work/h1.toml"
inside install -m 644 /mnt/t/h1.toml /etc/dctunnel/h1.toml
for i in h1 h3; do
    inside mkdir -p "/run/systemd/system/dctunnel@$i.service.d"
    inside sh -c "printf '[Service]\nLoadCredential=\n' >/run/systemd/system/dctunnel@$i.service.d/nokey.conf"
done
inside systemctl daemon-reload
before=$(inside sha256sum "$h_home/h2.test.pem" "$h_home/h2.test.key")
check "renewal: systemctl start dctunnel@h1" inside systemctl start dctunnel@h1
h1_journal() { inside journalctl -q -o cat -u dctunnel@h1 --no-pager; }
renewed() { h1_journal | grep -q 'renewed certificate in use'; }
check "renewal: renewed and in use, without a restart or a signal" wait_until 30 renewed
check "renewal: new certificate and key in the StateDirectory" test "$(inside sha256sum "$h_home/h2.test.pem" "$h_home/h2.test.key" | cut -c1-64)" != "$(printf '%s\n' "$before" | cut -c1-64)"
check "renewal: the new key is 0600, owned by dctunnel; nothing left pending" inside sh -c "[ \"\$(stat -c %a:%U $h_home/h2.test.key)\" = 600:dctunnel ] && ! ls -A $h_home | grep -q pending"
check "renewal: still one process" test "$(inside systemctl show -P NRestarts dctunnel@h1)" = 0
inside systemctl stop dctunnel@h1
# The same files under /etc, owned by dctunnel: read-only under the sandbox.
inside install -d -o dctunnel -g dctunnel -m 0700 /etc/dctunnel/h3
inside sh -c "cp -p $h_home/h2.test.pem $h_home/h2.test.key $h_home/ca.pem /etc/dctunnel/h3/"
renewal_config /etc/dctunnel/h3 7602 >"$work/h3.toml"
inside install -m 644 /mnt/t/h3.toml /etc/dctunnel/h3.toml
check "renewal: files under /etc are refused at start (ProtectSystem=strict)" sh -c "! nsenter -t $pid -a systemctl start dctunnel@h3"
check "renewal: the journal names the folder it cannot write" sh -c "nsenter -t $pid -a journalctl -q -o cat -u dctunnel@h3 | grep -q 'cannot write to /etc/dctunnel/h3'"
inside systemctl stop dctunnel@ca

# --- Removing and purging the package leaves nothing running ---------------
check "start again before removal" inside systemctl start dctunnel@off
check "dpkg -r: exit 0" inside dpkg -r dctunnel
check "dpkg -r: nothing running" inside sh -c '! pgrep -x dctunnel && ! systemctl is-active -q dctunnel@off'
check "dpkg -r: unit and binary gone" inside sh -c '! test -e /lib/systemd/system/dctunnel@.service && ! test -e /usr/bin/dctunnel'
check "dpkg -P: exit 0" inside dpkg -P dctunnel
check "dpkg -P: nothing running, package purged" inside sh -c '! pgrep -x dctunnel && ! dpkg -s dctunnel 2>/dev/null'

echo "systemd: $passed passed, $failed failed"
[ "$failed" = 0 ]
