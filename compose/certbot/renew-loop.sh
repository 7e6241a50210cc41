#!/bin/sh
# Certificate renewal on the server itself, so that no operator's machine must stay on:
# the `renewer` service (started by `invoke tls.init` and `invoke up` once an ACME
# certificate is in use) runs `certbot renew` every COLORGATE_RENEW_EVERY seconds, the
# first time that long after it starts (tls.init has just obtained one). certbot renews within 30 days of the end; its deploy hook installs the new
# certificate where the edge reads it. Each run's result is one JSON line in
# renewals.log beside the certificate, which the edge takes up (compose/edge/entrypoint.sh:
# a renewed certificate is checked with `nginx -t` and reloaded gracefully, renewals and
# failures go to the history) and `invoke tls.status` shows.
set -u
tls=${CG_TLS_DIR:-/etc/colorgate/tls}  # (another directory: the unit tests')
log=$tls/renewals.log
every=${COLORGATE_RENEW_EVERY:-43200}
ca=/etc/letsencrypt/colorgate-acme-ca.pem  # the ACME server's own CA, when tls.init was given one
[ -s "$ca" ] && export REQUESTS_CA_BUNDLE="$ca"

json() {  # a string as JSON: backslashes, quotes and control characters escaped
  printf '%s' "$1" | tr -d '\000-\011\013-\037' | sed 's/\\/\\\\/g; s/"/\\"/g' | awk 'NR > 1 { printf "\\n" } { printf "%s", $0 }'
}

while sleep "$every"; do
  started=$(date -u +%FT%TZ)
  t0=$(date +%s)
  before=$(cat "$tls/.changed" 2> /dev/null || true)
  if out=$(certbot renew --cert-name colorgate --non-interactive --no-random-sleep-on-renew \
             --deploy-hook /usr/local/bin/colorgate-deploy-hook 2>&1); then
    if [ "$(cat "$tls/.changed" 2> /dev/null || true)" != "$before" ]; then outcome=renewed; else outcome="not due"; fi
  else
    outcome=failed
  fi
  last=$(printf '%s\n' "$out" | grep -v '^ *$' | grep -v '^-*$' | tail -n 1)
  id="renew-$(date -u +%Y%m%dT%H%M%S)-$$"
  # a record as the history keeps one (the edge adds renewals and failures to it)
  printf '{"id": "%s", "action": "tls.renew", "operator": "the renewer on the server", "started": "%s", "finished": "%s", "duration_s": %s, "outcome": "%s", "detail": "%s", "from_color": "", "to_color": "", "from_version": "", "to_version": ""}\n' \
    "$id" "$started" "$(date -u +%FT%TZ)" "$(($(date +%s) - t0))" "$outcome" "$(json "$last")" >> "$log"
  # the last 100 runs are kept
  if [ "$(wc -l < "$log")" -gt 200 ]; then tail -n 100 "$log" > "$log.new" && mv "$log.new" "$log"; fi
done
