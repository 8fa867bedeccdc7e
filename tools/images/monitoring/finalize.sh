#!/usr/bin/env bash
# Trim the freshly debootstrapped monitoring rootfs before it is packed (argument: rootfs dir).
set -euo pipefail
r="$1"
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
       "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/debootstrap "$r"/tmp/* "$r"/var/tmp/*
# Debian's packages ship example configs and data dirs owned by their own accounts; appstack runs
# every monitoring process as 65534 (nobody) with its own config, so nothing else is needed.
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
: >"$r/etc/machine-id"
# A dependency-free HTTP probe for health checks (minbase has no curl or wget): bash's /dev/tcp.
cat >"$r/usr/local/bin/appstack-http-ok" <<'PROBE'
#!/bin/bash
# appstack-http-ok PORT PATH: exit 0 when http://127.0.0.1:PORT/PATH answers 200.
exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]
PROBE
chmod 755 "$r/usr/local/bin/appstack-http-ok"
# The versions the derived images are tagged with (checked by their builds).
chroot "$r" dpkg-query -W -f='${Package} ${Version}\n' \
  prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-blackbox-exporter >"$r/etc/appstack-monitoring-versions"
cat "$r/etc/appstack-monitoring-versions"
echo "appstack monitoring rootfs ready: $(du -sh "$r" | cut -f1)"
