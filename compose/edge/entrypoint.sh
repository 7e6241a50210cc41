#!/bin/sh
# Edge start-up: make sure a certificate exists (a locally generated one until an
# ACME certificate replaces it), write the HTTP->HTTPS redirect for the public HTTPS
# port, then run nginx in the foreground.
set -eu
domain=${COLORGATE_DOMAIN:-localhost}
https_port=${COLORGATE_HTTPS_PORT:-443}
drain=${COLORGATE_DRAIN_SECONDS:-30}
tls=/etc/colorgate/tls
case "$domain" in *[!A-Za-z0-9.-]*|"") echo "edge: bad COLORGATE_DOMAIN '$domain'" >&2; exit 64;; esac
case "$https_port" in *[!0-9]*|"") echo "edge: bad COLORGATE_HTTPS_PORT '$https_port'" >&2; exit 64;; esac
case "$drain" in *[!0-9]*|"") echo "edge: bad COLORGATE_DRAIN_SECONDS '$drain'" >&2; exit 64;; esac
rate=${COLORGATE_RATE_LIMIT:-200}
burst=${COLORGATE_RATE_BURST:-400}
conns=${COLORGATE_CONN_LIMIT:-200}
for n in "$rate" "$burst" "$conns"; do
  case "$n" in *[!0-9]*|"") echo "edge: bad rate or connection limit '$n'" >&2; exit 64;; esac
done
proxies=${COLORGATE_TRUSTED_PROXIES:-}
case "$proxies" in *[!0-9A-Fa-f.:/,]*) echo "edge: bad COLORGATE_TRUSTED_PROXIES '$proxies' (addresses or CIDRs, comma-separated)" >&2; exit 64;; esac
state=/etc/colorgate/state

# A local certificate, signed by a one-off local CA whose key is discarded at once,
# valid 365 days (Mozilla's intermediate profile allows 366 at most). Regenerated when
# the domain changes or within 30 days of its end; never touches a certificate it did
# not make (an ACME one).
local_cert() {
  echo "edge: generating a local certificate for $domain"
  tmp=$(mktemp -d)
  san="DNS:$domain"
  [ "$domain" = localhost ] && san="$san,IP:127.0.0.1,IP:::1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Colorgate local CA ($domain)" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$domain" \
    -keyout "$tmp/privkey.pem" -out "$tmp/leaf.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$san" > "$tmp/ext"
  openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 365 -extfile "$tmp/ext" -out "$tmp/fullchain.pem" 2>/dev/null
  mkdir -p "$tls/live"
  mv "$tmp/privkey.pem" "$tls/live/privkey.pem"
  mv "$tmp/fullchain.pem" "$tls/live/fullchain.pem"
  mv "$tmp/ca.pem" "$tls/local-ca.pem"
  printf '%s\n' "$domain" > "$tls/live/.colorgate-local"
  rm -rf "$tmp"
}
# `colorgate-edge --renew-local` (docker exec, by `invoke tls.renew`): a local certificate
# within 30 days of its end is made again and marked for the reload; nothing else.
if [ "${1:-}" = --renew-local ]; then
  if [ -f "$tls/live/.colorgate-local" ] && ! openssl x509 -checkend 2592000 -noout -in "$tls/live/fullchain.pem" > /dev/null 2>&1; then
    local_cert
    date -u +%FT%TZ > "$tls/.changed"
    echo "renewed"
  else
    echo "not due"
  fi
  exit 0
fi
if [ ! -s "$tls/live/fullchain.pem" ]; then
  local_cert
elif [ -f "$tls/live/.colorgate-local" ] && [ "$(cat "$tls/live/.colorgate-local")" != "$domain" ]; then
  local_cert
elif [ -f "$tls/live/.colorgate-local" ] && ! openssl x509 -checkend 2592000 -noout -in "$tls/live/fullchain.pem" > /dev/null 2>&1; then
  local_cert
fi

mkdir -p /tmp/colorgate
suffix=":$https_port"
[ "$https_port" = 443 ] && suffix=""
# to the configured domain, never to whatever Host the client sent
printf 'return 301 https://%s%s$request_uri;\n' "$domain" "$suffix" > /tmp/colorgate/redirect.conf
printf 'proxy_set_header X-Forwarded-Port %s;\n' "$https_port" > /tmp/colorgate/forwarded.conf
# The gates' token, made once and kept in the state volume (0600): Colorgate's gates send it
# in X-Colorgate-Gate (never passed on to the app). Their requests are exempt from the
# per-client limits and may pass maintenance mode and a write freeze, name the color that
# serves them during a canary, and are told which container answered (colorgate.lua);
# it also signs the canary bucket cookie.
if [ ! -s "$state/gate-token" ]; then
  (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/gate-token.new" && mv "$state/gate-token.new" "$state/gate-token")
fi
gate=$(cat "$state/gate-token")
case "$gate" in *[!0-9a-f]*|"") echo "edge: $state/gate-token is not a token: remove it (a new one is made at start)" >&2; exit 64;; esac
# Behind a load balancer or CDN (COLORGATE_TRUSTED_PROXIES): the client's address is the
# last one in X-Forwarded-For not sent by a trusted proxy, for the limits, the canary and
# the app (its X-Forwarded-For, X-Real-IP and Forwarded).
: > /tmp/colorgate/clients.conf
if [ -n "$proxies" ]; then
  printf '%s\n' "$proxies" | tr ',' '\n' | sed '/^$/d; s/.*/set_real_ip_from &;/' >> /tmp/colorgate/clients.conf
  printf 'real_ip_header X-Forwarded-For;\nreal_ip_recursive on;\n' >> /tmp/colorgate/clients.conf
fi
# Per client address: requests per second (with a burst) and connections at once; 0: none.
# Over either: 429. The gates' own requests have no key, so no limit.
printf 'map $http_x_colorgate_gate $cg_client { "%s" ""; default $binary_remote_addr; }\n' "$gate" >> /tmp/colorgate/clients.conf
: > /tmp/colorgate/limits.conf
if [ "$rate" != 0 ]; then
  printf 'limit_req_zone $cg_client zone=cg_req:10m rate=%sr/s;\n' "$rate" >> /tmp/colorgate/clients.conf
  printf 'limit_req zone=cg_req burst=%s nodelay;\n' "$burst" >> /tmp/colorgate/limits.conf
fi
if [ "$conns" != 0 ]; then
  printf 'limit_conn_zone $cg_client zone=cg_conn:10m;\n' >> /tmp/colorgate/clients.conf
  printf 'limit_conn cg_conn %s;\n' "$conns" >> /tmp/colorgate/limits.conf
fi
# The app's routes and the edge's answer headers: kept in the state volume by Colorgate
# (`invoke up` writes them, then reloads), so a changed route needs no new container. Until
# then none (app paths 404), or those an edge started by hand is given (base64 text).
if [ ! -s "$state/routes.conf" ]; then
  if [ -n "${COLORGATE_EDGE_ROUTES:-}" ]; then
    printf '%s' "$COLORGATE_EDGE_ROUTES" | base64 -d > "$state/routes.conf"
  else
    # the digest answer too, so that waiting for the first routes to be served logs no 404
    printf '%s\n' "# colorgate routes none (written by invoke up)" \
      'location = /.colorgate/routes { access_log off; allow 127.0.0.1; deny all; return 200 "none\n"; }' > "$state/routes.conf"
  fi
fi
# State written by earlier Colorgate versions (nginx includes) becomes the per-request files.
if [ -f "$state/active.conf" ] && [ ! -f "$state/live" ]; then
  sed -n 's/^set \$cg_\(color\|version\) "\([^"]*\)";$/\1=\2/p' "$state/active.conf" > "$state/live.new" && mv "$state/live.new" "$state/live"
fi
[ -f "$state/freeze.conf" ] && [ ! -f "$state/freeze" ] && printf 'hold=0\n' > "$state/freeze"
rm -f "$state/active.conf" "$state/active.conf.prev" "$state/freeze.conf"
# After a reload, old workers finish their connections for at most this long.
printf 'worker_shutdown_timeout %ss;\n' "$drain" > /tmp/colorgate/main.conf

# Renewals on the server (the renewer service, compose/certbot/renew-loop.sh), taken up
# every COLORGATE_RENEWAL_CHECK seconds: a renewed certificate is checked (nginx -t) and
# loaded by a graceful reload; renewals and failures go to the history (a run that found
# nothing due only to the renewer's log, which `invoke tls.status` reads).
take_up_renewals() {
  log=$tls/renewals.log
  seen=$(wc -l < "$log" 2> /dev/null || echo 0)
  while sleep "${COLORGATE_RENEWAL_CHECK:-60}"; do
    now=$(wc -l < "$log" 2> /dev/null || echo 0)
    if [ "$now" -le "$seen" ]; then seen=$now; continue; fi  # nothing new, or the log was shortened
    new=$(tail -n "$((now - seen))" "$log")
    seen=$now
    if printf '%s\n' "$new" | grep -q '"outcome": "renewed"'; then
      if nginx -t -q -c /etc/colorgate/nginx.conf 2> /dev/null; then
        nginx -s reload -c /etc/colorgate/nginx.conf && rm -f "$tls/.changed"
      else
        new=$(printf '%s\n' "$new" | sed 's/"outcome": "renewed", "detail": "[^"]*"/"outcome": "failed", "detail": "the edge rejected the renewed certificate (nginx -t): it keeps serving the old one"/')
      fi
    fi
    printf '%s\n' "$new" | grep -v '"outcome": "not due"' >> "$state/history.jsonl" || true
  done
}
take_up_renewals &
exec nginx -c /etc/colorgate/nginx.conf -g 'daemon off;'
