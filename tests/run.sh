#!/usr/bin/env bash
# The test suite on a fresh machine: installs what the tests need when it is
# missing, then runs `cargo test --locked` (extra arguments go to it).
#
#   bash tests/run.sh                 # install what is missing, run every test
#   bash tests/run.sh --install-only  # only the installs (what .ci/run does first)
#
# Needs: Debian packages (Node.js + npm for cognito-local, aws-amplify and
# playwright-core; Debian's Chromium for the browser tests; openssl for
# throwaway certificates; nginx for the load harness's baseline; Python 3
# with venv for MiniStack; prometheus for promtool, which checks
# deploy/monitoring; redis-server and haproxy for the replicas'
# coordination, behind a real load balancer),
# installed with apt when running as root — else the exact command is
# printed and the script stops. Then the npm packages
# pinned by tests/node/package-lock.json, the Next.js example's packages
# (examples/nextjs/package-lock.json) and its `next build`, and MiniStack,
# pinned, in target/ministack-venv (tests/support/ministack.rs looks there).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing Debian packages; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# npm writes node_modules/.package-lock.json; newer than the lockfile = done.
if [ ! tests/node/node_modules/.package-lock.json -nt tests/node/package-lock.json ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Next.js example (examples/nextjs), which tests/nextjs.rs runs behind the
# relay: its npm packages (same rule as above), then its production build,
# only when a source, its config or its packages are newer than the last
# build — so a run builds it at most once and every test reuses it.
app=examples/nextjs
if [ ! $app/node_modules/.package-lock.json -nt $app/package-lock.json ]; then
  (cd $app && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -f $app/.next/BUILD_ID ] || [ -n "$(find $app/app $app/lib $app/next.config.mjs \
    $app/tsconfig.json $app/package.json $app/node_modules/.package-lock.json \
    -newer $app/.next/BUILD_ID -print -quit)" ]; then
  (cd $app && NEXT_TELEMETRY_DISABLED=1 npx --no-install next build)
fi

if [ ! -x target/ministack-venv/bin/ministack ]; then
  python3 -m venv target/ministack-venv
  target/ministack-venv/bin/pip install --quiet --disable-pip-version-check \
    ministack==1.5.33 cryptography==50.0.2
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec cargo test --locked "$@"
