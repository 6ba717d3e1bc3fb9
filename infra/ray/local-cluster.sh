#!/usr/bin/env bash
# A real two-node Ray cluster on one machine, on loopback: a head node (127.0.0.2) and a worker node
# (127.0.0.3), each a separate `ray start` with its own temp dir and its own ports, so it collides with
# no other Ray on the machine. `down` stops exactly the processes this script started (each node runs in
# its own session; the session's processes are killed by id) — never `ray stop`, which kills every Ray
# process of the machine.
#
#   infra/ray/local-cluster.sh up            # head + worker; prints the address to connect to
#   infra/ray/local-cluster.sh kill-worker   # kill -9 of the worker node's raylet (a lost node)
#   infra/ray/local-cluster.sh up-worker     # (re)start the worker node: it rejoins the cluster
#   infra/ray/local-cluster.sh status        # the nodes' sessions and their processes
#   infra/ray/local-cluster.sh down          # stop both nodes (by session id), remove nothing else
#
# Settings (environment): ONEGEN_RAY_DIR (state: pids, logs; default /tmp/onegen-ray-$PORT),
# ONEGEN_RAY_PORT (GCS port of the head, default 26379; every other port is derived from it),
# ONEGEN_RAY_HEAD_CPUS / ONEGEN_RAY_WORKER_CPUS (default 1 each).
# Connect a driver with: ray.init(address="127.0.0.2:$PORT", _node_ip_address="127.0.0.2").
# Ray rewrites 127.0.0.1 to the machine's external address, hence 127.0.0.2/3 (Linux routes all 127/8).
set -euo pipefail

PORT="${ONEGEN_RAY_PORT:-26379}"
DIR="${ONEGEN_RAY_DIR:-/tmp/onegen-ray-$PORT}"
# Ray's own temp dir holds unix sockets, whose paths may not pass 107 bytes: kept short, apart from DIR
TMP="${ONEGEN_RAY_TMP:-/tmp/ogr-$PORT}"
HEAD_IP=127.0.0.2
WORKER_IP=127.0.0.3
HEAD_CPUS="${ONEGEN_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${ONEGEN_RAY_WORKER_CPUS:-1}"
RAY="${RAY:-ray}"

# Ports of one node, from a base: node manager, object manager, metrics, dashboard agent (listen, grpc),
# runtime-env agent, and a 40-port range for its worker processes.
node_ports() {  # $1 = base
  local b=$1
  echo "--node-manager-port=$((b + 1)) --object-manager-port=$((b + 2)) --metrics-export-port=$((b + 3))" \
       "--dashboard-agent-listen-port=$((b + 4)) --dashboard-agent-grpc-port=$((b + 5))" \
       "--runtime-env-agent-port=$((b + 6)) --min-worker-port=$((b + 10)) --max-worker-port=$((b + 49))"
}

start_node() {  # $1 = name, rest = ray start arguments
  local name=$1; shift
  mkdir -p "$DIR/$name"
  if [ -f "$DIR/$name.sid" ]; then
    local old; old=$(cat "$DIR/$name.sid")
    if kill -0 "$old" 2>/dev/null; then echo "$name: already running (session $old)"; return 0; fi
    pkill -KILL -s "$old" 2>/dev/null || true  # what a lost node left behind (its agents, idle workers)
  fi
  # setsid: the node and every process it spawns share one session id, which `down` kills by
  setsid "$RAY" start --block --disable-usage-stats --temp-dir="$TMP/$name" "$@" \
    >"$DIR/$name/ray-start.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.sid"
  echo "$name: session $! (log $DIR/$name/ray-start.log)"
}

alive() {  # any process in session $1
  [ -n "$1" ] && pgrep -s "$1" >/dev/null 2>&1
}

wait_nodes() {  # $1 = number of alive nodes to wait for, at most 90 s
  local want=$1 n=0 deadline=$((SECONDS + 90))
  while [ "$SECONDS" -lt "$deadline" ]; do
    for name in head worker; do  # a node whose `ray start` died will not come: say why, now
      # a `ray start --block` that exited leaves the node unusable, even if some of its processes live on
      if [ -f "$DIR/$name.sid" ] && ! kill -0 "$(cat "$DIR/$name.sid")" 2>/dev/null; then
        echo "$name: ray start exited; last lines of $DIR/$name/ray-start.log:" >&2
        tail -5 "$DIR/$name/ray-start.log" >&2; return 1
      fi
    done
    n=$(RAY_ADDRESS="$HEAD_IP:$PORT" python - <<'PY' 2>/dev/null || echo 0
import ray, os
ray.init(address=os.environ["RAY_ADDRESS"], _node_ip_address="127.0.0.2", logging_level="ERROR",
         log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)
    [ "$n" -ge "$want" ] && { echo "cluster: $n node(s) alive at $HEAD_IP:$PORT"; return 0; }
    sleep 1
  done
  echo "cluster: only $n of $want node(s) alive after 90 s; logs in $DIR" >&2
  return 1
}

up_head() {
  start_node head --head --node-ip-address="$HEAD_IP" --port="$PORT" --num-cpus="$HEAD_CPUS" \
    --include-dashboard=false $(node_ports $((PORT + 200)))
}

up_worker() {
  start_node worker --address="$HEAD_IP:$PORT" --node-ip-address="$WORKER_IP" --num-cpus="$WORKER_CPUS" \
    $(node_ports $((PORT + 300)))
}

stop_node() {  # $1 = name: TERM the session, then KILL what is left
  local name=$1 sid
  [ -f "$DIR/$name.sid" ] || return 0
  sid=$(cat "$DIR/$name.sid")
  if alive "$sid"; then
    pkill -TERM -s "$sid" 2>/dev/null || true
    for _ in $(seq 1 20); do alive "$sid" || break; sleep 0.5; done
    pkill -KILL -s "$sid" 2>/dev/null || true
  fi
  rm -f "$DIR/$name.sid"
  echo "$name: stopped (session $sid)"
}

case "${1:-}" in
  # a node that does not come up is stopped again: a failed `up` leaves nothing running
  up) { up_head && wait_nodes 1 && up_worker && wait_nodes 2; } || { stop_node worker; stop_node head; exit 1; } ;;
  up-worker) { up_worker && wait_nodes 2; } || { stop_node worker; exit 1; } ;;
  kill-worker)
    sid=$(cat "$DIR/worker.sid")
    pid=$(pgrep -s "$sid" -x raylet || true)
    [ -n "$pid" ] || { echo "worker: no raylet in session $sid" >&2; exit 1; }
    kill -9 "$pid"; echo "worker: killed raylet $pid (kill -9)" ;;
  status)
    for name in head worker; do
      if [ -f "$DIR/$name.sid" ] && alive "$(cat "$DIR/$name.sid")"; then
        echo "$name: session $(cat "$DIR/$name.sid"): $(pgrep -s "$(cat "$DIR/$name.sid")" | wc -l) processes"
      else echo "$name: not running"; fi
    done ;;
  down) stop_node worker; stop_node head; rm -rf "$TMP" ;;
  *) echo "usage: $0 up|up-worker|kill-worker|status|down" >&2; exit 2 ;;
esac
