#!/usr/bin/env bash
# Installs moto, the AWS emulator, pinned (tests/moto/requirements.txt), into
# .venv. Re-installs only when the pinned set changes. Used by `make test` and
# `make demo CLOUD=aws-emulator`; needs python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cmp -s tests/moto/requirements.txt .venv/.installed-requirements 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/moto/requirements.txt
  cp tests/moto/requirements.txt .venv/.installed-requirements
fi
