#!/usr/bin/env bash
# Makes test TLS material for livemig (and QEMU, which reads the same
# layout) with GnuTLS's certtool (Debian gnutls-bin):
#
#   DIR/ca/            ca-cert.pem ca-key.pem        the test CA
#   DIR/server/        ca-cert.pem server-cert.pem server-key.pem
#                      (names: localhost, livemig-dst, 127.0.0.1, 10.199.0.2)
#   DIR/client/        ca-cert.pem client-cert.pem client-key.pem
#                      (DN: "CN=livemig-client,O=livemig test")
#   DIR/hostile/       ca-cert.pem (the real CA) + a client certificate
#                      signed by a second, unrelated CA
#   DIR/noclient/      ca-cert.pem only: a client without a certificate
#   DIR/psk/           keys.psk: "qemu:<key>" and "other:<key>"
#   DIR/psk-wrong/     keys.psk: "qemu:<another key>"
#   DIR/expired/       ca-cert.pem + a client certificate valid for
#                      EXPIRE_SECONDS (default: already expired), to test
#                      the handshake's "expired" check after it ran out
#
# Usage: make-test-certs.sh DIR [EXPIRE_SECONDS]
set -euo pipefail

dir=${1:?usage: make-test-certs.sh DIR [EXPIRE_SECONDS]}
expire=${2:-}
command -v certtool >/dev/null || { echo "certtool missing: apt-get install gnutls-bin" >&2; exit 1; }
mkdir -p "$dir"/{ca,ca2,server,client,hostile,noclient,psk,psk-wrong,expired}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { certtool --generate-privkey --key-type ecdsa --curve secp256r1 --outfile "$1" 2>/dev/null; }

# Two CAs: the one everybody trusts, and a hostile one.
for ca in ca ca2; do
    key "$dir/$ca/ca-key.pem"
    cat > "$tmp/$ca.tmpl" <<T
cn = "livemig test $ca"
ca
cert_signing_key
expiration_days = 3650
T
    certtool --generate-self-signed --load-privkey "$dir/$ca/ca-key.pem" \
        --template "$tmp/$ca.tmpl" --outfile "$dir/$ca/ca-cert.pem" 2>/dev/null
done

key "$dir/server/server-key.pem"
cat > "$tmp/server.tmpl" <<T
cn = "livemig-dst"
organization = "livemig test"
dns_name = "livemig-dst"
dns_name = "localhost"
ip_address = "127.0.0.1"
ip_address = "10.199.0.2"
tls_www_server
encryption_key
signing_key
expiration_days = 3650
T
certtool --generate-certificate --load-privkey "$dir/server/server-key.pem" \
    --load-ca-certificate "$dir/ca/ca-cert.pem" --load-ca-privkey "$dir/ca/ca-key.pem" \
    --template "$tmp/server.tmpl" --outfile "$dir/server/server-cert.pem" 2>/dev/null

client_cert() { # out-dir signing-ca template-extra
    key "$1/client-key.pem"
    cat > "$tmp/client.tmpl" <<T
cn = "livemig-client"
organization = "livemig test"
tls_www_client
encryption_key
signing_key
$3
T
    certtool --generate-certificate --load-privkey "$1/client-key.pem" \
        --load-ca-certificate "$dir/$2/ca-cert.pem" --load-ca-privkey "$dir/$2/ca-key.pem" \
        --template "$tmp/client.tmpl" --outfile "$1/client-cert.pem" 2>/dev/null
}
client_cert "$dir/client" ca "expiration_days = 3650"
client_cert "$dir/hostile" ca2 "expiration_days = 3650"
if [ -n "$expire" ]; then
    until=$(date -u -d "@$(( $(date +%s) + expire ))" '+%Y-%m-%d %H:%M:%S')
else
    until=$(date -u -d '@86400' '+%Y-%m-%d %H:%M:%S')
fi
from=$(date -u -d '@0' '+%Y-%m-%d %H:%M:%S')
client_cert "$dir/expired" ca "activation_date = \"$from UTC\"
expiration_date = \"$until UTC\""

for d in server client hostile noclient expired; do
    cp "$dir/ca/ca-cert.pem" "$dir/$d/ca-cert.pem"
done

echo "qemu:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$dir/psk/keys.psk"
echo "other:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> "$dir/psk/keys.psk"
echo "qemu:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$dir/psk-wrong/keys.psk"
chmod 600 "$dir"/*/*key*.pem "$dir"/psk*/keys.psk
