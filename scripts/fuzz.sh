#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded number of inputs (a smoke
# run, not a campaign): `make fuzz`. See docs/fuzzing.md.
#
#   FUZZ_RUNS=20000        inputs per target (libFuzzer -runs)
#   FUZZ_TARGETS="a b"     only these targets (default: all, `cargo fuzz list`)
#   FUZZ_TOOLCHAIN=stable  rustup toolchain (default: nightly if installed)
#   FUZZ_SANITIZER=none    address (default) or none
#   FUZZ_TIMEOUT=30        seconds one input may take before it counts as a hang
#   CARGO_TARGET_DIR       default fuzz/target
#
# Works on a stable toolchain too: cargo-fuzz needs `-Z` flags, which stable
# accepts with RUSTC_BOOTSTRAP=1, set here when the toolchain is not nightly.
# New inputs go to a temporary directory; fuzz/corpus/ is only read.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
runs="${FUZZ_RUNS:-20000}"
sanitizer="${FUZZ_SANITIZER:-address}"
timeout="${FUZZ_TIMEOUT:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"

if ! command -v cargo >/dev/null; then
  echo "error: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
elif command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
fi
if ! rustc "${toolchain[@]}" --version | grep -q -- '-nightly'; then
  # A stable or beta compiler: let it take cargo-fuzz's -Z flags.
  export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION (once per machine)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

fuzz=(cargo "${toolchain[@]}" fuzz)
targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list)}"
echo "==> $(rustc "${toolchain[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, sanitizer $sanitizer, $runs runs a target"

start=$SECONDS
echo "==> building fuzz targets into $CARGO_TARGET_DIR (the first build takes a while)"
"${fuzz[@]}" build --sanitizer "$sanitizer"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  t0=$SECONDS
  mkdir -p "$work/$t"
  args=(-runs="$runs" -timeout="$timeout" -print_final_stats=0)
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  # The first corpus directory receives new inputs: a temporary one.
  if ! "${fuzz[@]}" run --sanitizer "$sanitizer" "$t" "$work/$t" "fuzz/corpus/$t" -- "${args[@]}" \
      >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log" >&2
    echo "error: fuzz target $t failed; the input is in fuzz/artifacts/$t/ (see docs/fuzzing.md to reproduce)" >&2
    exit 1
  fi
  echo "    $t: $(grep -m1 -o 'Done [0-9]* runs' "$work/$t.log" || echo done) in $((SECONDS - t0)) s"
done
echo "==> no crash in $((SECONDS - start)) s"
