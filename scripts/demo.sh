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
$AGENT enroll --config "$DEMO/agent.toml" --token "$TOKEN" --control-plane "$URL" | tee "$DEMO/enroll.txt"
# A compliance team keeps this key off the agent host, to verify the log against it later.
VERIFIER_KEY=$(sed -n 's/^audit verifier key: //p' "$DEMO/enroll.txt")

echo "==> running the agent (logs: $DEMO/agent.log)"
$AGENT run --config "$DEMO/agent.toml" >"$DEMO/agent.log" 2>&1 &
AGENT_PID=$!
pids+=($AGENT_PID)
for _ in $(seq 100); do $CONTROL agents | grep -q ' connected ' && break; sleep 0.1; done
$CONTROL agents

echo "==> applying examples/plan.yaml: a cluster, a node pool, a sandbox pool, a database"
$CONTROL submit examples/plan.yaml --wait

echo "==> agent status"
$AGENT status --config "$DEMO/agent.toml" || true

echo "==> stopping the agent (it signs a last checkpoint of its audit log)"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null || true

echo "==> verifying the agent's audit log offline, against the key printed at enrollment"
$AGENT audit verify --config "$DEMO/agent.toml" --key "$VERIFIER_KEY"
FIRST_OP=$(sed -n 's/.*"kind":"operation.finished","op":"\([^"]*\)".*/\1/p' "$DEMO/agent/audit/log.jsonl" | head -1)
echo "==> the receipt (a C2SP tlog-proof) of $FIRST_OP, verifiable on its own"
$AGENT audit show --op "$FIRST_OP" --config "$DEMO/agent.toml" | sed -n '/^receipt/,$p' | cut -c1-100

echo "==> stopping"
cleanup
trap - EXIT
echo "demo finished: everything applied, results delivered, audit log verified"
