#!/usr/bin/env bash
# Debian packages the test suite needs: PostgreSQL 15 with pgvector (provider tests run a real
# server), debootstrap (test images), promtool (from Debian's prometheus: the alert rules' tests),
# the distribution registry (docker-registry: the release e2e test runs its own, as a user process).
# Installs only what is missing; needs root (apt-get).
set -euo pipefail
need=()
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || need+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)   # the ssh:// DOCKER_HOST e2e test
command -v promtool >/dev/null 2>&1 || need+=(prometheus)   # promtool check/test rules
[[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)   # appstack release e2e
if [[ ${#need[@]} -gt 0 ]]; then
  echo "appstack: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
