#!/usr/bin/env bash
# The team board on this machine, in one command: MiniStack (Cognito +
# AppSync Events), a TLS front for its managed login, appsync-relay serving
# https://localhost:8443 and the example's production build behind it.
# Prints the URL and the two demo users; Ctrl-C stops everything.
#
#   bash examples/nextjs/run-local.sh [--port 8443] [--login-port 8444] [--token-seconds 300]
#
# Installs what is missing first (the repository's installer: Debian
# packages as root, npm packages, `next build` when stale, MiniStack) and
# builds the relay (`cargo build`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bash "$repo/tests/run.sh" --install-only
(cd "$repo" && cargo build --quiet --bin appsync-relay)
cd "$here"
exec node dev/stack.mjs "$@"
