#!/bin/sh
# certbot deploy hook: install a newly obtained or renewed certificate where the edge
# reads it (the tls volume), as the edge's own user (certbot runs as it), and leave a
# marker so Colorgate reloads nginx only when a certificate changed.
set -eu
: "${RENEWED_LINEAGE:?run by certbot as a deploy hook}"
tls=/etc/colorgate/tls
mkdir -p "$tls/live"
tmp=$(mktemp -d "$tls/.incoming.XXXXXX")
cp "$RENEWED_LINEAGE/fullchain.pem" "$tmp/fullchain.pem"
cp "$RENEWED_LINEAGE/privkey.pem" "$tmp/privkey.pem"
chmod 0644 "$tmp/fullchain.pem"
chmod 0600 "$tmp/privkey.pem"
mv "$tmp/privkey.pem" "$tls/live/privkey.pem"
mv "$tmp/fullchain.pem" "$tls/live/fullchain.pem"
rmdir "$tmp"
rm -f "$tls/live/.colorgate-local"
date -u +%FT%TZ > "$tls/.changed"
echo "colorgate: installed the certificate for $RENEWED_DOMAINS"
