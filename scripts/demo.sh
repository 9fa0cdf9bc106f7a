#!/usr/bin/env bash
# The whole flow on the embedded simulated cloud: control plane, enrollment
# token, agent enrollment and run, the example plan, results, audit
# verification. Everything runs on loopback and stops at the end.
#
# CLOUD=aws-emulator runs the same plan through the AWS provider against moto,
# the AWS emulator (installed into .venv, started on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."

CLOUD=${CLOUD:-sim}
case "$CLOUD" in
  sim | aws-emulator) ;;
  *) echo "error: CLOUD=$CLOUD: use sim (the default) or aws-emulator" >&2; exit 2 ;;
esac

DEMO=demo-data
rm -rf "$DEMO"
mkdir -p "$DEMO"

if [ "$CLOUD" = sim ]; then
  # The simulated cloud only: no cloud SDK is compiled.
  echo "==> building the control plane and a sim-only agent"
  cargo build --release --locked -p byoc-control -p byoc-agent --no-default-features --features byoc-agent/sim
else
  echo "==> building the control plane and the agent (with the AWS provider)"
  cargo build --release --locked -p byoc-control -p byoc-agent
fi
BIN="${CARGO_TARGET_DIR:-target}/release"
CONTROL="$BIN/byoc-control --data-dir $DEMO/control"
AGENT="$BIN/byoc-agent"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

PLAN=examples/plan.yaml
if [ "$CLOUD" = aws-emulator ]; then
  echo "==> moto, the AWS emulator (pinned, into .venv; logs: $DEMO/moto.log)"
  ./scripts/moto-venv.sh
  .venv/bin/python tests/moto/moto_server.py -H 127.0.0.1 -p 0 >"$DEMO/moto.log" 2>&1 &
  pids+=($!)
  MOTO_PORT=""
  for _ in $(seq 200); do
    MOTO_PORT=$(sed -n 's#.*Running on http://127.0.0.1:\([0-9]*\).*#\1#p' "$DEMO/moto.log" | head -1)
    [ -n "$MOTO_PORT" ] && break
    sleep 0.1
  done
  [ -n "$MOTO_PORT" ] || { echo "error: moto did not start: $(cat "$DEMO/moto.log")" >&2; exit 1; }
  MOTO=http://127.0.0.1:$MOTO_PORT
  echo "    listening on $MOTO"
  echo "==> the network the install module would make (a VPC, two subnets, the cluster's security group)"
  NET=$(.venv/bin/python tests/moto/aws.py "$MOTO" setup-network)
  echo "    $NET"
  # The emulator takes any key; on AWS the agent takes its role from the standard chain.
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true
  PLAN="$DEMO/plan-aws.yaml"
  sed -e 's/cloud: sim/cloud: aws/' -e 's/account: demo-account/account: "123456789012"/' \
    -e 's/region: sim-west-1/region: us-east-1/' \
    -e 's/on the embedded simulated cloud/on the AWS emulator/' examples/plan.yaml >"$PLAN"
fi

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
if [ "$CLOUD" = aws-emulator ]; then
  .venv/bin/python - "$MOTO" "$NET" examples/agent-aws.toml >"$DEMO/agent.toml" <<'PY'
import json, sys
endpoint, net, template = sys.argv[1], json.loads(sys.argv[2]), open(sys.argv[3]).read()
print(template.replace("vpc-0123456789abcdef0", net["vpc"])
      .replace('["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]', json.dumps(net["subnets"]))
      .replace("sg-0123456789abcdef0", net["sg"])
      .replace("# endpoint_url = \"http://127.0.0.1:5000\"", f'endpoint_url = "{endpoint}"')
      .replace('poll_interval = "15s"', 'poll_interval = "200ms"'), end="")
PY
else
  sed "s#demo-data#$DEMO#g" examples/agent.toml >"$DEMO/agent.toml"
fi
$AGENT enroll --config "$DEMO/agent.toml" --token "$TOKEN" --control-plane "$URL" | tee "$DEMO/enroll.txt"
# A compliance team keeps this key off the agent host, to verify the log against it later.
VERIFIER_KEY=$(sed -n 's/^audit verifier key: //p' "$DEMO/enroll.txt")

echo "==> running the agent (logs: $DEMO/agent.log)"
$AGENT run --config "$DEMO/agent.toml" >"$DEMO/agent.log" 2>&1 &
AGENT_PID=$!
pids+=($AGENT_PID)
for _ in $(seq 100); do $CONTROL agents | grep -q ' connected ' && break; sleep 0.1; done
$CONTROL agents

echo "==> applying $PLAN: a cluster, a node pool, a sandbox pool, a database"
$CONTROL submit "$PLAN" --wait

if [ "$CLOUD" = aws-emulator ]; then
  echo "==> what the emulator holds, seen by boto3 rather than the agent"
  .venv/bin/python tests/moto/aws.py "$MOTO" inventory
fi

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
echo "demo finished ($CLOUD): everything applied, results delivered, audit log verified"
