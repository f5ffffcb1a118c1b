#!/usr/bin/env bash
# The capacity model's check (part of `make bench`; docs/performance.md, "A capacity model").
#
# One redis-server and five release nodes on loopback ([broker] type = "redis"), pinned to core 0,
# the load tool on core 1. The model says what a node and Redis spend per connection, per
# delivery and per publication, and that a publication costs Redis and the nodes a fixed part
# plus a part per node subscribed to its channel. This script calibrates that on one and two
# nodes, predicts four, runs four, and prints measured against predicted:
#   - idle memory: per connection from a 4,000-connection run on a fresh node (node 5), predicted
#     for 16,000 over nodes 1-4 (fresh too: memory freed by earlier runs would hide growth);
#     descriptors counted during the hold;
#   - rooms (200 rooms x 10 members x 1 msg/s, every room on every node it is spread over) on 1,
#     2, then 4 nodes: the nodes' and Redis's CPU per publication, 4 predicted from 1 and 2 by
#     the model's line;
#   - fan-out (2,000 subscribers at 20 msg/s) on 1, 2 and 4 nodes: deliveries per node
#     CPU-second (the per-delivery figure the model uses for large audiences).
# SIZE=2 doubles the connection counts (docs/performance.md's figures use the defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
SIZE=${SIZE:-1}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi

redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${pin_server[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    >"$work/redis.log" 2>&1 &
redis=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$work/node.toml" <<TOML
[server]
bind = "127.0.0.1:0"
rate_limit = 100000
rate_limit_burst = 100000
[broker]
type = "redis"
url = "redis://127.0.0.1:$redis_port"
TOML

pids=() urls=()
for n in 1 2 3 4 5; do
    "${pin_server[@]}" "$BIN/switchboard" serve --config "$work/node.toml" >"$work/out$n" 2>"$work/log$n" &
    pids+=($!)
done
for n in 1 2 3 4 5; do
    for _ in $(seq 100); do grep -q listening "$work/out$n" && break; sleep 0.1; done
    address=$(sed -n 's|.*http://||p' "$work/out$n" | head -1)
    urls+=("ws://$address/ws")
    # Ready once the node's probe has been through Redis and back.
    for _ in $(seq 100); do curl -sf "http://$address/readyz" >/dev/null && break; sleep 0.1; done
done

# load NAME FIRST COUNT ARGS...: the tool over nodes FIRST..FIRST+COUNT-1 (1-based), watching
# their PIDs (and then Redis's, unless NODES_ONLY=1); the JSON report goes to $work/NAME.json.
load() {
    local name=$1 first=$2 count=$3
    shift 3
    local args=()
    for ((i = first - 1; i < first - 1 + count; i++)); do
        args+=(--url "${urls[i]}" --server-pid "${pids[i]}")
    done
    [ "${NODES_ONLY:-0}" = 1 ] || args+=(--server-pid "$redis")
    "${pin_load[@]}" "$BIN/switchboard-load" "${args[@]}" --json "$@" >"$work/$name.json"
}

redis_memory() {
    redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'
}

# descriptors_during SECONDS PID...: the most descriptors the PIDs held together, sampled.
descriptors_during() {
    local until=$((SECONDS + $1)) most=0 now
    shift
    while [ $SECONDS -lt $until ]; do
        now=0
        for pid in "$@"; do now=$((now + $(ls /proc/"$pid"/fd | wc -l))); done
        [ "$now" -gt "$most" ] && most=$now
        sleep 0.5
    done
    echo "$most"
}

IDLE=$((4000 * SIZE))
echo "== idle: $IDLE joined connections on one fresh node (calibration)"
base_fds=$(ls /proc/"${pids[4]}"/fd | wc -l)
redis_before=$(redis_memory)
NODES_ONLY=1 load idle-1 5 1 idle --connections "$IDLE" --channels 100 --hold 4 &
sleep 3
fds_1=$(descriptors_during 3 "${pids[4]}")
redis_held=$(redis_memory)
wait $!
echo "== idle: $((IDLE * 4)) over four fresh nodes"
NODES_ONLY=1 load idle-4 1 4 idle --connections $((IDLE * 4)) --channels 100 --hold 6 &
sleep 4
fds_4=$(descriptors_during 4 "${pids[@]:0:4}")
wait $!

ROOMS=(rooms --rooms $((200 * SIZE)) --members 10 --rate 1 --duration 10)
FANOUT=(fanout --subscribers $((2000 * SIZE)) --messages 200 --rate 20)
for k in 1 2 4; do
    echo "== rooms and fan-out on $k node(s)"
    load "rooms-$k" 1 "$k" "${ROOMS[@]}"
    load "fanout-$k" 1 "$k" "${FANOUT[@]}"
done

python3 - "$work" "$IDLE" "$base_fds" "$fds_1" "$fds_4" "$redis_before" "$redis_held" <<'PY'
import json, sys

work, idle = sys.argv[1], int(sys.argv[2])
base_fds, fds_1, fds_4, redis_before, redis_held = (int(value) for value in sys.argv[3:8])

def read(name):
    with open(f"{work}/{name}.json") as file:
        return json.load(file)

def costs(report):
    """Per publication: (the nodes' CPU µs, Redis's CPU µs, deliveries); the last PID is Redis."""
    published = max(report["delivery"]["published"], 1)
    each = [process["seconds"] for process in report["server_cpu"]["per_process"]]
    nodes, redis = sum(each[:-1]), each[-1]
    return (nodes * 1e6 / published, redis * 1e6 / published,
            report["delivery"]["delivered"] / published, report)

def check(what, predicted, measured):
    error = (measured - predicted) / predicted * 100 if predicted else 0.0
    print(f"  {what:<44} predicted {predicted:>10.1f}  measured {measured:>10.1f}  ({error:+.0f} %)")

one, four = read("idle-1"), read("idle-4")
per_connection = one["memory"]["per_connection_bytes"]
print(f"idle: {per_connection / 1024:.1f} KiB and {(fds_1 - base_fds) / idle:.2f} descriptors "
      f"per connection on one node; Redis {(redis_held - redis_before) / idle:.0f} bytes per "
      f"connection (used_memory)")
grown = four["memory"]["resident_after_bytes"] - four["memory"]["resident_before_bytes"]
check("16k-connection run, four nodes: resident MiB", per_connection * four["connections"] / 2**20,
      grown / 2**20)
check("the same: descriptors", 4 * base_fds + (fds_1 - base_fds) / idle * four["connections"], fds_4)

for mode in ("rooms",):
    one, two, four = (costs(read(f"{mode}-{k}")) for k in (1, 2, 4))
    print(f"{mode}: per publication, {one[2]:.0f} deliveries")
    for index, name in ((0, "the nodes' CPU µs"), (1, "Redis's CPU µs")):
        per_node = two[index] - one[index]
        fixed = one[index] - per_node
        print(f"  {name}: {fixed:.1f} fixed + {per_node:.1f} per subscribed node (from 1 and 2 nodes)")
        check(f"four nodes: {name}", fixed + 4 * per_node, four[index])
    for k, run in ((1, one), (2, two), (4, four)):
        report = run[3]
        print(f"  {k} node(s): {report['delivery']['delivered']} of {report['delivery']['expected']} "
              f"delivered, p99 {report['latency_us']['p99'] / 1000:.1f} ms, nodes + Redis "
              f"{report['server_cpu']['utilisation'] * 100:.0f} % of a core")

# Fan-out: the deliveries dominate; what a node's CPU-second carries, on 1, 2 and 4 nodes.
for k in (1, 2, 4):
    report = read(f"fanout-{k}")
    each = [process["seconds"] for process in report["server_cpu"]["per_process"]]
    nodes = sum(each[:-1])
    rate = report["delivery"]["delivered"] / nodes if nodes else 0.0
    print(f"fanout on {k} node(s): {rate:,.0f} deliveries per node CPU-second, "
          f"p99 {report['latency_us']['p99'] / 1000:.1f} ms, Redis {each[-1]:.2f} s CPU")
PY
