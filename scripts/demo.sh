#!/usr/bin/env bash
# The whole flow on the embedded simulated cloud: control plane, enrollment
# token, agent enrollment and run, the example plan, results, audit
# verification. Everything runs on loopback and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=demo-data
rm -rf "$DEMO"
mkdir -p "$DEMO"

echo "==> building"
cargo build --release --workspace --bins --locked
BIN=target/release
CONTROL="$BIN/byoc-control --data-dir $DEMO/control"
AGENT="$BIN/byoc-agent"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> starting the control plane (logs: $DEMO/control.log)"
$CONTROL serve --listen 127.0.0.1:0 >"$DEMO/control.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$DEMO/control/listen.url" ] && break; sleep 0.1; done
URL=$(cat "$DEMO/control/listen.url")
echo "    listening on $URL"

echo "==> creating a single-use enrollment token"
TOKEN=$($CONTROL token create --ttl 10m)
echo "    ${TOKEN:0:24}... (pins the control plane's CA)"

echo "==> enrolling the agent (its private key is made here and never sent)"
sed "s#demo-data#$DEMO#g" examples/agent.toml >"$DEMO/agent.toml"
$AGENT enroll --config "$DEMO/agent.toml" --token "$TOKEN" --control-plane "$URL"

echo "==> running the agent (logs: $DEMO/agent.log)"
$AGENT run --config "$DEMO/agent.toml" >"$DEMO/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do $CONTROL agents | grep -q ' connected ' && break; sleep 0.1; done
$CONTROL agents

echo "==> applying examples/plan.yaml: a cluster, a node pool, a sandbox pool, a database"
$CONTROL submit examples/plan.yaml --wait

echo "==> agent status"
$AGENT status --config "$DEMO/agent.toml" || true

echo "==> verifying the agent's audit log (offline, trusts nothing)"
$AGENT audit verify --config "$DEMO/agent.toml"

echo "==> stopping"
cleanup
trap - EXIT
echo "demo finished: everything applied, results delivered, audit log verified"
