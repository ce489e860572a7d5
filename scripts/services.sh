#!/usr/bin/env bash
# Makes sure the PostgreSQL and Redis that seawall's store tests use answer on
# 127.0.0.1, starting them with the machine's own packages when they do not.
set -euo pipefail

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p 5432
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}

redis_up() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
  else
    (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null
  fi
}

wait_for() {
  local name=$1 check=$2
  for _ in $(seq 1 30); do
    if $check; then
      return 0
    fi
    sleep 1
  done
  echo "services: $name did not come up within 30 s" >&2
  return 1
}

if ! pg_up; then
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
  wait_for PostgreSQL pg_up || echo "services: PostgreSQL unavailable; its tests will report it" >&2
fi

if ! redis_up; then
  echo "services: starting Redis"
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  wait_for Redis redis_up || echo "services: Redis unavailable; its tests will report it" >&2
fi
