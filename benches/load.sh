#!/usr/bin/env bash
# A short load-tool run against a freshly started release node (part of `make bench`):
# fan-out to 1,000 subscribers, a fixed-rate run, idle memory, RS256 handshakes, and clients
# that drop and rejoin a channel with history; then the same fan-out runs against the
# featureless floor (benches/floor.rs, the `fanout-floor` example) on the same core, and the
# ratios Switchboard / floor.
# The server is pinned to core 0 and the load tool to core 1 when the machine has two cores.
# docs/performance.md has the full-size commands behind the published figures.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
openssl pkey -in "$work/key.pem" -pubout -out "$work/key.pub.pem"
cat > "$work/node.toml" <<TOML
[server]
bind = "127.0.0.1:0"
rate_limit = 100000
rate_limit_burst = 100000
[auth]
anonymous = true
[auth.jwt]
public_key_file = "$work/key.pub.pem"
[[channels]]
pattern = "history:*"
join = "anyone"
publish = "anyone"
history_size = 1000
history_ttl = "10m"
[[channels]]
pattern = "*"
join = "anyone"
publish = "anyone"
TOML

"${pin_server[@]}" "$BIN/switchboard" serve --config "$work/node.toml" >"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
url="ws://$(sed -n 's|.*http://||p' "$work/out" | head -1)/ws"
load=("${pin_load[@]}" "$BIN/switchboard-load" --url "$url" --server-pid "$server")

SATURATED=(fanout --subscribers 1000 --messages 1000)
FIXED_RATE=(fanout --subscribers 1000 --messages 100 --rate 20)
echo "== fanout: 1,000 subscribers, 1,000 messages, window 10"
"${load[@]}" --json "${SATURATED[@]}" | tee "$work/node-saturated.json"
echo "== fanout at a fixed rate: 1,000 subscribers, 20 msg/s for 5 s"
"${load[@]}" --json "${FIXED_RATE[@]}" | tee "$work/node-rate.json"
echo "== idle: 2,000 joined connections"
"${load[@]}" idle --connections 2000
echo "== connect: 5,000 RS256 handshakes"
"${load[@]}" --rsa-key "$work/key.pem" --concurrency 64 connect --count 5000
echo "== recovery: 200 clients dropping every ~2 s, 100 msg/s for 5 s"
"${load[@]}" recovery --clients 200 --rate 100 --duration 5 --channel history:load

echo "== the featureless floor (benches/floor.rs), same runs, same core"
"${pin_server[@]}" "$BIN/examples/fanout-floor" >"$work/floor-out" 2>&1 &
floor=$!
for _ in $(seq 100); do grep -q listening "$work/floor-out" && break; sleep 0.1; done
floor_url="ws://$(sed -n 's|.*http://||p' "$work/floor-out" | head -1)/ws"
floor_load=("${pin_load[@]}" "$BIN/switchboard-load" --url "$floor_url" --server-pid "$floor")
"${floor_load[@]}" --json "${SATURATED[@]}" >"$work/floor-saturated.json"
"${floor_load[@]}" --json "${FIXED_RATE[@]}" >"$work/floor-rate.json"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
def read(name):
    with open(f"{work}/{name}.json") as file:
        return json.load(file)
node, floor = read("node-saturated"), read("floor-saturated")
per_cpu = lambda report: report["server_cpu"]["work_per_cpu_second"]
print(f"saturated fan-out, deliveries per server CPU-second: switchboard {per_cpu(node):,.0f}, "
      f"floor {per_cpu(floor):,.0f}, ratio {per_cpu(node) / per_cpu(floor):.2f}")
node, floor = read("node-rate"), read("floor-rate")
p99 = lambda report: report["latency_us"]["p99"]
print(f"fixed rate, p99 latency: switchboard {p99(node) / 1000:.1f} ms, floor {p99(floor) / 1000:.1f} ms, "
      f"ratio {p99(node) / max(p99(floor), 1):.2f} (target: at most 1.3)")
PY
