#!/bin/sh
# Colorgate server setup: make a fresh Debian or Ubuntu VPS ready for Colorgate.
# Runs as root before Python exists on the host; `invoke server.setup --host ...`
# uploads and runs it over SSH. Idempotent: a second run changes nothing and says so.
#
#   server-setup.sh DEPLOY_USER "SSH_PUBLIC_KEY" [SSH_PORT]
#
# What it sets up:
#   - Docker engine (Debian/Ubuntu package docker.io) and the compose plugin (a distro
#     package when there is one, else the binary in $COLORGATE_COMPOSE_BINARY)
#   - DEPLOY_USER in the docker group, logging in with that key; password and
#     keyboard-interactive SSH logins switched off for everyone with
#     COLORGATE_PASSWORD_LOGIN=no, and root's SSH login with COLORGATE_ROOT_LOGIN=no
#     (invoke server.setup passes them once DEPLOY_USER logged in with the key: nobody
#     is locked out by a key that does not work); sshd's port set where it listens, in
#     ssh.socket where systemd listens for it (socket activation: Ubuntu 22.10 and later)
#   - a firewall (nftables table `inet colorgate`) letting in only SSH, 80 and 443, also to
#     ports containers publish (Docker's DNAT bypasses the input hook)
#   - unattended security upgrades
#   - iproute2 (`ss`): the gates check the host's listening sockets over SSH
#   - Docker defaults: rotation of container logs (json-file, 10 MB x 5 per container),
#     no-new-privileges, live-restore, no inter-container traffic on the default bridge
#   - a Swarm node, with COLORGATE_SWARM_PEERS=ADDR[,ADDR...] (the other nodes, addresses
#     or CIDRs; kept for later runs, `none` forgets them): Swarm's ports (2377/tcp,
#     7946/tcp+udp, 4789/udp) and IPsec's ESP (encrypted overlays) let in from those only, and Docker's defaults without
#     live-restore, which Swarm refuses to run with
set -eu

user=${1:-}
key=${2:-}
ssh_port=${3:-22}
changed=0

say() { printf 'server-setup: %s\n' "$*"; }
die() { printf 'server-setup: error: %s\n' "$*" >&2; exit 1; }
bad() { printf 'server-setup: error: %s\n' "$*" >&2; exit 2; }  # an argument is wrong: nothing was changed
change() { changed=$((changed + 1)); say "changed: $*"; }
has_systemd() { [ -d /run/systemd/system ]; }
socket_activated() { systemctl is-enabled --quiet ssh.socket 2> /dev/null; }

# Write stdin to $1 (mode $2) only when the content differs; true when it changed.
put() {
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"
    return 1
  fi
  install -D -m "$2" "$tmp" "$1"
  rm -f "$tmp"
  return 0
}

[ "$(id -u)" = 0 ] || die "run as root (sudo sh server-setup.sh ...)"
case $user in
  ""|*[!a-z0-9_-]*) bad "usage: server-setup.sh DEPLOY_USER \"SSH_PUBLIC_KEY\" [SSH_PORT] (user: lowercase letters, digits, - and _)" ;;
esac
case $key in
  ssh-*" "*|ecdsa-*" "*|sk-*" "*) ;;
  *) bad "the second argument must be an SSH public key (ssh-ed25519 AAAA... you@laptop)" ;;
esac
case $ssh_port in
  ""|*[!0-9]*) bad "SSH_PORT must be a number" ;;
esac
peers_file=/etc/colorgate/swarm-peers
peers=${COLORGATE_SWARM_PEERS:-}
if [ -z "$peers" ] && [ -f "$peers_file" ]; then peers=$(cat "$peers_file"); fi
case $peers in
  none) peers="" ;;
  *[!0-9./,]*|,*|*,|*,,*) bad "COLORGATE_SWARM_PEERS must be IPv4 addresses or CIDRs, comma-separated (10.0.0.2,10.0.0.3), or none" ;;
esac
if [ -z "$peers" ] && command -v docker > /dev/null && [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2> /dev/null)" = active ]; then
  die "this engine is a Swarm node: pass its peers (--swarm-peers ADDR,...), or run docker swarm leave first"
fi
[ -r /etc/os-release ] || die "cannot tell the distribution: /etc/os-release is missing"
# shellcheck disable=SC1091
. /etc/os-release
case "${ID:-}:${ID_LIKE:-}" in
  debian:*|ubuntu:*|*:*debian*) ;;
  *) die "this script supports Debian and Ubuntu, not ${PRETTY_NAME:-this system}" ;;
esac

# --- packages --------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
available() { apt-cache policy "$1" 2> /dev/null | sed -n 's/^ *Candidate: //p' | grep -qv '(none)'; }
missing=""
for pkg in docker.io nftables unattended-upgrades openssh-server ca-certificates iproute2; do
  installed "$pkg" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing > /dev/null
  change "installed$missing"
fi

# The compose plugin: a distro package where one exists, else an uploaded binary.
if ! docker compose version > /dev/null 2>&1; then
  for pkg in docker-compose-plugin docker-compose-v2; do
    if available "$pkg"; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq --no-install-recommends "$pkg" > /dev/null
      change "installed $pkg"
      break
    fi
  done
fi
if ! docker compose version > /dev/null 2>&1; then
  binary=${COLORGATE_COMPOSE_BINARY:-}
  if [ -z "$binary" ] || [ ! -f "$binary" ]; then
    die "no compose plugin package here: pass the binary in COLORGATE_COMPOSE_BINARY (invoke server.setup does)"
  fi
  install -D -m 0755 "$binary" /usr/local/lib/docker/cli-plugins/docker-compose
  change "installed the compose plugin in /usr/local/lib/docker/cli-plugins"
fi

# --- the deploy user ---------------------------------------------------------------
if ! id -u "$user" > /dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
  change "created user $user"
fi
if ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
  usermod -aG docker "$user"
  change "added $user to the docker group"
fi
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
keys=$home/.ssh/authorized_keys
if ! { [ -f "$keys" ] && grep -qxF "$key" "$keys"; }; then
  printf '%s\n' "$key" >> "$keys"
  change "authorized the key for $user"
fi
chown "$user:$user" "$keys"
chmod 0600 "$keys"

# --- firewall: only SSH, HTTP and HTTPS come in -----------------------------------------
# Its own table, so Docker's rules (and anyone else's) are left alone. A new SSH port is
# let in before sshd moves to it, and the port sshd listens on now stays open until it
# has moved (the next run closes it): a failed move never locks anyone out.
ports=$ssh_port
for port in $(ss -Htlnp 2> /dev/null | awk '/"sshd"/ { n = split($4, a, ":"); print a[n] }' | sort -u); do
  case ", $ports," in *", $port,"*) ;; *) ports="$ports, $port" ;; esac
done
# A Swarm node's peers reach its control plane (2377), gossip (7946) and overlay (4789),
# and send the IPsec (ESP) packets of its encrypted overlay networks.
swarm_rules=""
if [ -n "$peers" ]; then
  swarm_rules="ip saddr { $(printf '%s' "$peers" | sed 's/,/, /g') } tcp dport { 2377, 7946 } accept
    ip saddr { $(printf '%s' "$peers" | sed 's/,/, /g') } udp dport { 4789, 7946 } accept
    ip saddr { $(printf '%s' "$peers" | sed 's/,/, /g') } meta l4proto esp accept"
fi
if cat <<NFT | put /etc/colorgate/firewall.nft 0644; then
table inet colorgate
delete table inet colorgate
table inet colorgate {
  # db.move's relay port, for the managed database's addresses only, while a move runs
  # (Colorgate adds and removes the elements; they expire by themselves)
  set relay {
    type ipv4_addr . inet_service
    flags interval, timeout
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
    ct state invalid drop
    meta l4proto { icmp, ipv6-icmp } accept
    tcp dport { $ports, 80, 443 } accept
    $swarm_rules
  }
  # Docker publishes a container's port by DNAT, so those connections pass the forward
  # hook, not the input hook above: from outside, only published 80 and 443 (and the
  # relay, from its allow-list) reach a container. Containers' own traffic is left alone.
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct status dnat meta l4proto tcp ct original proto-dst { 80, 443 } accept
    ct status dnat meta l4proto tcp ip saddr . ct original proto-dst @relay accept
    iifname "docker0" accept
    iifname "br-*" accept
    ct status dnat drop
  }
}
NFT
  change "firewall rules written: SSH ($ports), 80 and 443 only, for the host and for published container ports${peers:+; the Swarm ports for $peers}"
  reload_firewall=1
fi
# Loaded whenever the file changed (a new SSH port, say), and when the table is missing
# (a reboot before the unit existed). Before sshd moves to a new port: the session this
# runs in stays up (established connections are let through) and the next one gets in.
if [ "${reload_firewall:-0}" = 1 ] || ! nft list table inet colorgate 2> /dev/null | grep -q dport; then
  nft -f /etc/colorgate/firewall.nft || die "could not load the firewall rules (nft -f /etc/colorgate/firewall.nft)"
  change "firewall loaded"
fi
if printf '[Unit]\nDescription=Colorgate firewall (SSH, 80, 443 only)\nBefore=network-pre.target docker.service\nWants=network-pre.target\n\n[Service]\nType=oneshot\nExecStart=/usr/sbin/nft -f /etc/colorgate/firewall.nft\nRemainAfterExit=yes\n\n[Install]\nWantedBy=multi-user.target\n' \
    | put /etc/systemd/system/colorgate-firewall.service 0644; then
  change "firewall loads at boot (colorgate-firewall.service)"
  if has_systemd; then systemctl daemon-reload && systemctl enable colorgate-firewall.service; fi
fi

# --- SSH: keys only, and root not at all, once the deploy user's key works ---------------
# COLORGATE_PASSWORD_LOGIN=no and COLORGATE_ROOT_LOGIN=no are passed by `invoke
# server.setup` once it has logged in as the deploy user with its key (so nobody is
# locked out); a later run without them keeps what is there.
sshd_conf=/etc/ssh/sshd_config.d/10-colorgate.conf
root_login=${COLORGATE_ROOT_LOGIN:-}
if [ -z "$root_login" ]; then
  root_login=prohibit-password
  if grep -qx 'PermitRootLogin no' "$sshd_conf" 2> /dev/null; then root_login=no; fi
fi
case $root_login in
  no|prohibit-password) ;;
  *) die "COLORGATE_ROOT_LOGIN must be no or prohibit-password" ;;
esac
password_login=${COLORGATE_PASSWORD_LOGIN:-}
if [ -z "$password_login" ] && grep -qx 'PasswordAuthentication no' "$sshd_conf" 2> /dev/null; then password_login=no; fi
case $password_login in
  no|"") ;;
  *) die "COLORGATE_PASSWORD_LOGIN must be no" ;;
esac
keys_only=""
[ "$password_login" = no ] && keys_only='PasswordAuthentication no\nKbdInteractiveAuthentication no\n'
# shellcheck disable=SC2059
if printf "Port %s\\n${keys_only}PermitRootLogin %s\\nPubkeyAuthentication yes\\n" "$ssh_port" "$root_login" \
    | put "$sshd_conf" 0644; then
  if [ "$password_login" = no ]; then
    change "sshd: key-only logins on port $ssh_port, root login: $root_login"
  else
    change "sshd: port $ssh_port, root login: $root_login; password logins as they were until the deploy user's key works"
  fi
  mkdir -p /run/sshd
  sshd -t || die "sshd rejects its configuration: see $sshd_conf"
  if has_systemd && ! socket_activated; then systemctl reload ssh 2> /dev/null || systemctl reload sshd; fi
fi
# Socket activation (Ubuntu 22.10 and later): systemd listens for sshd, so the port is the
# socket's, whatever sshd_config says; the sessions that run go on.
if has_systemd && socket_activated; then
  install -d -m 0755 /etc/systemd/system/ssh.socket.d
  if printf '[Socket]\nListenStream=\nListenStream=0.0.0.0:%s\nListenStream=[::]:%s\n' "$ssh_port" "$ssh_port" \
      | put /etc/systemd/system/ssh.socket.d/10-colorgate.conf 0644; then
    systemctl daemon-reload && systemctl restart ssh.socket
    change "ssh.socket: systemd listens for sshd on port $ssh_port"
  fi
fi

# --- unattended security upgrades ------------------------------------------------------
if printf 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n' \
    | put /etc/apt/apt.conf.d/20auto-upgrades 0644; then
  change "unattended security upgrades on"
fi

# --- Docker: container log rotation ------------------------------------------------
# Docker's defaults: containers rotate their logs, cannot gain privileges (setuid), go
# on running while the engine restarts (an upgrade), and on the default bridge do not
# talk to each other (Colorgate's stacks use networks of their own).
# A Swarm node keeps its containers only while its engine runs: Swarm refuses live-restore.
daemon=/etc/docker/daemon.json
one_host='{"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "5"}, "live-restore": true, "no-new-privileges": true, "icc": false}'
swarm_node='{"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "5"}, "no-new-privileges": true, "icc": false}'
defaults=$one_host
wants='"max-size" "live-restore":.true "no-new-privileges":.true "icc":.false'
if [ -n "$peers" ]; then
  defaults=$swarm_node
  wants='"max-size" "no-new-privileges":.true "icc":.false'
fi
ours=0
if [ ! -s "$daemon" ] || [ "$(cat "$daemon")" = "$one_host" ] || [ "$(cat "$daemon")" = "$swarm_node" ]; then ours=1; fi
if [ "$ours" = 1 ] && printf '%s\n' "$defaults" | put "$daemon" 0644; then
  change "docker defaults: logs rotate (10 MB x 5), no-new-privileges, ${peers:+no }live-restore, no icc on the default bridge"
  if has_systemd; then systemctl restart docker; fi
elif [ "$ours" = 0 ]; then
  for want in $wants; do
    grep -q "$want" "$daemon" || say "warning: $daemon (yours, left as it is) lacks $(printf '%s' "$want" | tr . ' '); Colorgate's defaults: $defaults"
  done
  if [ -n "$peers" ] && grep -q '"live-restore": *true' "$daemon"; then
    say "warning: $daemon (yours, left as it is) sets live-restore, which Swarm refuses: take it out before docker swarm init or join"
  fi
fi
if [ -n "$peers" ]; then
  if printf '%s\n' "$peers" | put "$peers_file" 0644; then change "a Swarm node: its peers are $peers"; fi
elif [ -f "$peers_file" ]; then
  rm -f "$peers_file"
  change "no longer a Swarm node: Swarm's ports closed"
fi
if has_systemd; then
  ssh_unit=ssh
  if socket_activated; then ssh_unit=ssh.socket; fi  # a second sshd would take its port
  for unit in docker "$ssh_unit"; do
    systemctl is-enabled --quiet "$unit" 2> /dev/null || { systemctl enable --now "$unit" && change "enabled $unit"; }
  done
fi

if [ "$changed" = 0 ]; then
  say "nothing to change: the server is set up"
else
  say "$changed change(s) made"
fi
