#!/bin/sh
# Regenerates the throwaway example PKI in certs-example/ with dctunnel's own
# `certs` commands, or only fixes the modes of its private keys.
#
#   certs-example/regenerate.sh              delete and regenerate everything
#   certs-example/regenerate.sh --fix-modes  chmod 600 every .key (git stores
#                                            keys as 0644; dctunnel refuses
#                                            group/other-readable keys)
#
# The binary is `cargo run` of this repository, or $DCTUNNEL if set.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

fix_modes() {
    find "$here" -type f -name '*.key' -exec chmod 600 {} +
}

case "${1:-}" in
--fix-modes)
    fix_modes
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0 [--fix-modes]" >&2
    exit 2
    ;;
esac

if [ -n "${DCTUNNEL:-}" ]; then
    dctunnel() { "$DCTUNNEL" "$@"; }
else
    cargo build --quiet --manifest-path "$here/../Cargo.toml" --bin dctunnel
    dctunnel() { cargo run --quiet --manifest-path "$here/../Cargo.toml" --bin dctunnel -- "$@"; }
fi

# Host certificates last 3650 days so the repository's examples do not rot;
# the CAs last a little longer so that they outlive every host certificate.
ca_days=3660
host_days=3650

rm -rf "$here/ca" "$here/other-ca" "$here/hosts" "$here/pinned"

dctunnel certs init-ca --dir "$here/ca" --name "dctunnel example CA" --days $ca_days
dctunnel certs init-ca --dir "$here/other-ca" --name "dctunnel other CA" --days $ca_days

# Each host key is made as on a real host (`certs request`: the key never
# leaves), then the request alone is signed with the CA (`certs sign`). The
# requests are deleted afterwards: they are not needed once signed.
host() {
    dctunnel certs request --out "$here/hosts" "$@"
}
sign() {
    dctunnel certs sign --ca "$here/ca" --days $host_days "$here/hosts/$1.csr"
    rm "$here/hosts/$1.csr"
}
host --name server.example.dctunnel --dns localhost --ip 127.0.0.1 --ip ::1
host --name client.example.dctunnel
host --name off1.openfoodfacts.org
host --name off2.openfoodfacts.org --dns proxy2.openfoodfacts.org
host --name ovh1.openfoodfacts.org --dns pmg.openfoodfacts.org
host --name ovh2.openfoodfacts.org
host --name ovh-stunnel-client.openfoodfacts.org
# An Ed25519 host, for tests of the second key type.
host --name ed25519.example.dctunnel --dns localhost --ip 127.0.0.1 --ip ::1 --key-type ed25519
# A host revoked in ca/ca.crl, for revocation tests.
host --name revoked.example.dctunnel --dns localhost --ip 127.0.0.1 --ip ::1
for name in server.example.dctunnel client.example.dctunnel off1.openfoodfacts.org \
    off2.openfoodfacts.org ovh1.openfoodfacts.org ovh2.openfoodfacts.org \
    ovh-stunnel-client.openfoodfacts.org ed25519.example.dctunnel revoked.example.dctunnel; do
    sign "$name"
done
dctunnel certs revoke --ca "$here/ca" --reason key-compromise "$here/hosts/revoked.example.dctunnel.pem"

# Same name as a legitimate host, signed by the wrong CA: must be rejected.
# (`issue`, key and certificate made at once by the CA, is for throwaway
# setups like this one.)
dctunnel certs issue --ca "$here/other-ca" --out "$here/other-ca" --days $host_days \
    --name client.example.dctunnel

# Self-signed certificates for pin-based (CA-less) tests.
dctunnel certs keygen --out "$here/pinned" --days $host_days \
    --name pinned-server.example.dctunnel --dns localhost --ip 127.0.0.1 --ip ::1
dctunnel certs keygen --out "$here/pinned" --days $host_days \
    --name pinned-client.example.dctunnel

fix_modes
