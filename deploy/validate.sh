#!/usr/bin/env bash
# Offline validation of deploy/: the Kubernetes manifests (strict schemas of
# the pinned Kubernetes versions, the ServiceMonitor against
# deploy/schemas/, cross-references between documents) and the Dockerfile
# (hadolint + structural checks). Needs python3 >= 3.11 with venv and a
# package index; no cluster, no Docker engine.
#
#   bash deploy/validate.sh        # from the repository root (or anywhere)
#
# Tools are installed once into target/deploy-venv, pinned by
# deploy/requirements-validate.txt, and reinstalled when that file changes.
# Exits non-zero on any problem; the last line is a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/deploy-venv
req=deploy/requirements-validate.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "deploy/validate.sh: needs python3 >= 3.11 (tomllib)" >&2; exit 2; }

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" \
    || { echo "deploy/validate.sh: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 2; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
  echo "$want" >"$stamp"
fi

# Dockerfile lint: every finding fails (hadolint's default threshold). Its
# result is reported in the summary so the manifests are checked either way.
hadolint_rc=0
"$venv/bin/hadolint" --no-color deploy/Dockerfile || hadolint_rc=$?

# Manifests, cross-checks, Dockerfile structure; prints the summary line.
DEPLOY_HADOLINT="$("$venv/bin/hadolint" --version | awk '{print $NF}')" \
DEPLOY_HADOLINT_RC="$hadolint_rc" \
  "$venv/bin/python" deploy/validate.py
