#!/usr/bin/env bash
# Trim a freshly debootstrapped rootfs before it is packed (argument: rootfs dir).
set -euo pipefail
r="$1"
# Debian's postgresql-common creates a "main" cluster at install time: images initdb their own.
rm -rf "$r"/etc/postgresql/17/main "$r"/var/lib/postgresql/17/main
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
       "$r"/var/log/*.log "$r"/var/log/apt/* "$r"/debootstrap "$r"/tmp/* "$r"/var/tmp/*
# Debian's caddy package takes uid/gid 999, which the postgres image gives its postgres user (as
# the official image does): move caddy's system account to 990 and re-own its files.
if grep -q '^caddy:x:999:' "$r/etc/passwd"; then
  sed -i 's/^caddy:x:999:999:/caddy:x:990:990:/' "$r/etc/passwd"
  sed -i 's/^caddy:x:999:/caddy:x:990:/' "$r/etc/group"
  find "$r" -xdev \( -uid 999 -o -gid 999 \) -exec chown -h 990:990 {} +
fi
# no services may start inside image builds
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
: >"$r/etc/machine-id"
echo "appstack base rootfs ready: $(du -sh "$r" | cut -f1)"
