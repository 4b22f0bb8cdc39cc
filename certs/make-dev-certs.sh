#!/usr/bin/env bash
# Writes a development CA and a serving certificate for localhost and 127.0.0.1 into this
# directory (ca.crt, tls.crt, tls.key). Extra DNS names may be given as arguments.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
sans="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do sans="$sans,DNS:$name"; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=system-upgrade-controller dev CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=system-upgrade-controller" -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -out tls.crt -extfile tls.ext 2>/dev/null
rm -f tls.csr tls.ext ca.srl
echo "wrote $(pwd)/ca.crt, tls.crt and tls.key for $sans"
