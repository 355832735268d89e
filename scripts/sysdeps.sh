#!/usr/bin/env bash
# Installs the Debian packages the tests need when they are missing and we may (root).
# Without root, the tests that need a missing package skip and name it; under CI=true
# nothing may skip, so a missing package is an error here.
set -euo pipefail

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(redis-server redis-sentinel chromium nginx prometheus docker-compose)

missing=()
for pkg in "${want[@]}"; do
  case "$pkg" in
    redis-server) command -v redis-server >/dev/null || missing+=(redis-server) ;;
    # Debian's redis-sentinel: /usr/bin/redis-sentinel, the tests' Sentinel
    redis-sentinel) command -v redis-sentinel >/dev/null || [ -x /usr/bin/redis-sentinel ] || missing+=(redis-sentinel) ;;
    wrk) command -v wrk >/dev/null || missing+=(wrk) ;;
    chromium) command -v chromium >/dev/null || missing+=(chromium) ;;
    # /usr/sbin is not on every user's PATH
    nginx) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx) ;;
    haproxy) command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy) ;;
    caddy) command -v caddy >/dev/null || missing+=(caddy) ;;
    # promtool (`promtool check rules`, `promtool test rules`) comes with Debian's prometheus
    prometheus) command -v promtool >/dev/null || missing+=(prometheus) ;;
    # `docker-compose config` checks deploy/compose/compose.yaml (no daemon needed)
    docker-compose) command -v docker-compose >/dev/null || missing+=(docker-compose) ;;
    *) echo "sysdeps: unknown package $pkg" >&2; exit 2 ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "sysdeps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif [ "${CI:-}" = "true" ]; then
  echo "sysdeps: missing ${missing[*]} and cannot install (not root); CI may not skip" >&2
  exit 1
else
  echo "sysdeps: missing ${missing[*]}; the tests that need them will skip"
fi
