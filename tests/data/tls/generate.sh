#!/bin/sh
# Regenerates the test certificates in this directory (OpenSSL 3).
# ca.crt signs server.crt (localhost, 127.0.0.1), wronghost.crt (db.example.com),
# expired.crt (2020-2021) and client.crt (CN=repl). other-ca.crt is an unrelated CA.
# The sig-*.crt files exist only for their signature algorithms (channel-binding hashes).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

ec "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 36500 -subj /CN=walrelay-test-ca \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt
ec "$tmp/other.key"
openssl req -x509 -new -key "$tmp/other.key" -sha256 -days 36500 -subj /CN=other-ca \
    -addext basicConstraints=critical,CA:true -out other-ca.crt

leaf() { # name key cn san digest [days]
    openssl req -new -key "$2" -subj "/CN=$3" -out "$tmp/$1.csr"
    printf 'basicConstraints=CA:false\nsubjectAltName=%s\n' "$4" > "$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA ca.crt -CAkey "$tmp/ca.key" -CAcreateserial -"$5" \
        -days 36500 -extfile "$tmp/$1.ext" -out "$1.crt"
}
ec server.key
leaf server server.key localhost 'DNS:localhost,IP:127.0.0.1' sha256
leaf wronghost server.key db.example.com 'DNS:db.example.com' sha256
leaf sig-ecdsa-sha384 server.key localhost 'DNS:localhost' sha384
leaf sig-ecdsa-sha512 server.key localhost 'DNS:localhost' sha512
leaf sig-ecdsa-sha1 server.key localhost 'DNS:localhost' sha1
ec client.key
leaf client client.key repl 'DNS:repl' sha256

# expired: issued through `openssl ca`, which accepts explicit dates.
mkdir "$tmp/ca"; : > "$tmp/ca/index.txt"; echo 1000 > "$tmp/ca/serial"
cat > "$tmp/ca.cnf" <<CNF
[ca]
default_ca = d
[d]
dir = $tmp/ca
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
default_md = sha256
policy = p
copy_extensions = copy
[p]
commonName = supplied
CNF
openssl req -new -key server.key -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -out "$tmp/expired.csr"
openssl ca -batch -config "$tmp/ca.cnf" -cert ca.crt -keyfile "$tmp/ca.key" -in "$tmp/expired.csr" \
    -startdate 20200101000000Z -enddate 20210101000000Z -notext -out expired.crt

openssl req -x509 -newkey rsa:1024 -keyout "$tmp/rsa.key" -nodes -sha512 -days 36500 \
    -subj /CN=rsa -out sig-rsa-sha512.crt
openssl req -x509 -newkey ed25519 -keyout "$tmp/ed.key" -nodes -days 36500 \
    -subj /CN=ed25519 -out sig-ed25519.crt
rm -f ca.srl
chmod 600 ./*.key

for c in server sig-ecdsa-sha384 sig-ecdsa-sha512 sig-ecdsa-sha1 sig-rsa-sha512; do
    echo "$c: $(openssl x509 -in $c.crt -noout -text | grep -m1 'Signature Algorithm' | sed 's/.*: //')"
done
