#!/bin/sh
# Record this container's color and version where nginx serves them, then run nginx.
set -eu
mkdir -p /tmp/colorgate
color=${COLORGATE_COLOR:-unknown}
version=${COLORGATE_VERSION:-unknown}
case "$color$version" in *[!A-Za-z0-9._-]*) echo "frontend: bad COLORGATE_COLOR/VERSION" >&2; exit 64;; esac
printf '{"color":"%s","version":"%s"}\n' "$color" "$version" > /tmp/colorgate/version.json
printf 'add_header X-Colorgate-Color "%s" always;\nadd_header X-Colorgate-Version "%s" always;\n' \
  "$color" "$version" > /tmp/colorgate/identity.conf
exec nginx -c /etc/colorgate/nginx.conf -g 'daemon off;'
