#!/usr/bin/env bash
# Runs the whole test suite from a fresh checkout: everything it needs is
# installed or built here (nothing is assumed to be set up by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

echo "==> system packages the tests use (Debian; installed once per machine)"
# - golang-go, golang-golang-x-mod-dev: Go's golang.org/x/mod/sumdb/{note,tlog},
#   an independent implementation the audit log is cross-checked against
#   (audit/tests/go_crosscheck.rs);
# - tinyproxy-bin (the executable, no service): tests/tests/proxy.rs runs a real HTTPS proxy on loopback.
# Without them those tests fail (they never pass silently).
need=()
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/mod/sumdb/tlog ] || need+=(golang-golang-x-mod-dev)
command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy-bin)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null; then
    echo "    installing ${need[*]}"
    apt_install() { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
    apt_install || { $SUDO apt-get update -qq && apt_install; }
  else
    echo "warning: install ${need[*]}: the tests that use them will fail" >&2
  fi
fi

echo "==> moto, the AWS emulator (pinned: tests/moto/requirements.txt, into .venv)"
./scripts/moto-venv.sh

echo "==> formatting"
cargo fmt --all -- --check

echo "==> no module imports a module that imports it back"
python3 scripts/module-cycles.py agent/src gate/src control/src audit/src wal/src proto/src errors/src providers/*/src

echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> dependency policy (deny.toml: bans, licenses, sources)"
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  echo "    installing cargo-deny $DENY_VERSION (once per machine)"
  cargo install cargo-deny --version "$DENY_VERSION" --locked --quiet
fi
# Advisories need the RustSec database from GitHub, which this network does
# not reach; run `cargo deny check advisories` where it does.
cargo deny --log-level error check bans licenses sources

echo "==> a sim-only agent links no cloud SDK, and refuses a config naming a cloud it left out"
if cargo tree --locked -p byoc-agent --no-default-features --features sim -e normal --prefix none \
    | grep -E '^aws-(sdk|config|smithy|runtime|sigv4|credential|types)'; then
  echo "error: the sim-only agent links the AWS SDK (above)" >&2
  exit 1
fi
cargo test --locked -q -p byoc-providers -p byoc-agent --no-default-features --features byoc-providers/sim,byoc-agent/sim --lib

echo "==> building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
  # nextest does not run doctests
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads 4
fi
