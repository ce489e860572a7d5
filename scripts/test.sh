#!/usr/bin/env bash
# seawall's test command: starts the local services the store tests need, then
# runs every test of the workspace (unit, integration and doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"

cargo test --workspace --all-features "$@"
