#!/usr/bin/env bash
# A real Dask cluster on one machine: `dask scheduler` + N `dask worker` processes,
# started in the background, used by `dask-em fit`, and shut down cleanly.
#
# Usage:
#   deploy/local/cluster.sh up                    start the scheduler and workers; print the address
#   deploy/local/cluster.sh address               print the scheduler address of the running cluster
#   deploy/local/cluster.sh down                  stop the workers, then the scheduler
#   deploy/local/cluster.sh fit STORE [ARGS...]   up; dask-em fit STORE --scheduler ADDRESS ARGS...; down
#
# Example:
#   N_WORKERS=4 NTHREADS=2 MEMORY_LIMIT=4GiB deploy/local/cluster.sh fit data/cube.zarr \
#       --array reflectance --n-components 8 --covariance-type full --output model.zarr
#
# Settings (environment variables, defaults in brackets):
#   N_WORKERS [2]  NTHREADS [1]  MEMORY_LIMIT [2GiB] (per worker process)
#   HOST [127.0.0.1]  SCHEDULER_PORT [8786]  DASHBOARD_PORT [8787]
#   RUN_DIR [./dask-em-local] (scheduler file, pid files, logs, worker spill directories)
#   PYTHON [python]  DASK [dask]  STARTUP_TIMEOUT [60] seconds  STOP_TIMEOUT [30] seconds
set -euo pipefail

N_WORKERS=${N_WORKERS:-2}
NTHREADS=${NTHREADS:-1}
MEMORY_LIMIT=${MEMORY_LIMIT:-2GiB}
HOST=${HOST:-127.0.0.1}
SCHEDULER_PORT=${SCHEDULER_PORT:-8786}
DASHBOARD_PORT=${DASHBOARD_PORT:-8787}
RUN_DIR=${RUN_DIR:-./dask-em-local}
PYTHON=${PYTHON:-python}
DASK=${DASK:-dask}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

SCHEDULER_FILE="$RUN_DIR/scheduler.json"

die() { echo "cluster.sh: $*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the processes whose pids are in the files given: SIGTERM to all of them, wait,
# SIGKILL as a last resort for any still running after STOP_TIMEOUT seconds.
stop_pid_files() {
    local f pids=() waited=0 left
    for f in "$@"; do
        [ -f "$f" ] && alive "$f" && pids+=("$(cat "$f")")
    done
    if [ "${#pids[@]}" -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        while :; do
            left=()
            for f in "${pids[@]}"; do kill -0 "$f" 2>/dev/null && left+=("$f"); done
            [ "${#left[@]}" -gt 0 ] || break
            if [ "$waited" -ge "$((STOP_TIMEOUT * 10))" ]; then
                echo "cluster.sh: pids ${left[*]} ignored SIGTERM for ${STOP_TIMEOUT}s; killing them" >&2
                kill -KILL "${left[@]}" 2>/dev/null || true
                break
            fi
            sleep 0.1; waited=$((waited + 1))
        done
    fi
    rm -f "$@"
}

cmd_down() {
    local f workers=()
    for f in "$RUN_DIR"/worker-*.pid; do
        [ -e "$f" ] && workers+=("$f")
    done
    stop_pid_files "${workers[@]}"
    stop_pid_files "$RUN_DIR/scheduler.pid"
    rm -f "$SCHEDULER_FILE"
    echo "cluster.sh: cluster in $RUN_DIR stopped"
}

cmd_address() {
    [ -f "$SCHEDULER_FILE" ] || die "no cluster running in $RUN_DIR (no $SCHEDULER_FILE); run '$0 up' first"
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$SCHEDULER_FILE"
}

cmd_up() {
    command -v "$DASK" >/dev/null || die "'$DASK' not found; install dask-em (pip install dask-em) in this environment or set DASK=/path/to/dask"
    mkdir -p "$RUN_DIR"
    if alive "$RUN_DIR/scheduler.pid"; then
        die "a scheduler is already running from $RUN_DIR (pid $(cat "$RUN_DIR/scheduler.pid")); run '$0 down' first or set RUN_DIR"
    fi
    rm -f "$SCHEDULER_FILE"
    # Anything started before a failure (or Ctrl-C) is stopped again.
    trap 'cmd_down >/dev/null' EXIT

    "$DASK" scheduler --host "$HOST" --port "$SCHEDULER_PORT" \
        --dashboard-address "$HOST:$DASHBOARD_PORT" --scheduler-file "$SCHEDULER_FILE" \
        </dev/null >"$RUN_DIR/scheduler.log" 2>&1 &
    echo $! >"$RUN_DIR/scheduler.pid"

    local waited=0
    until [ -s "$SCHEDULER_FILE" ]; do
        alive "$RUN_DIR/scheduler.pid" || { cat "$RUN_DIR/scheduler.log" >&2; die "the scheduler exited; its log is above"; }
        [ "$waited" -lt "$((STARTUP_TIMEOUT * 10))" ] || die "the scheduler did not start within ${STARTUP_TIMEOUT}s; see $RUN_DIR/scheduler.log"
        sleep 0.1; waited=$((waited + 1))
    done

    local i
    for i in $(seq 1 "$N_WORKERS"); do
        "$DASK" worker --scheduler-file "$SCHEDULER_FILE" --host "$HOST" \
            --nthreads "$NTHREADS" --memory-limit "$MEMORY_LIMIT" --name "local-$i" \
            --dashboard-address "$HOST:0" --local-directory "$RUN_DIR/worker-$i" \
            </dev/null >"$RUN_DIR/worker-$i.log" 2>&1 &
        echo $! >"$RUN_DIR/worker-$i.pid"
    done

    # Wait until every worker has registered, then print the address and the dashboard.
    "$PYTHON" - "$SCHEDULER_FILE" "$N_WORKERS" "$STARTUP_TIMEOUT" <<'EOF' || { tail -n 20 "$RUN_DIR"/worker-*.log >&2; die "workers did not register; their logs are above"; }
import sys
from distributed import Client

scheduler_file, n_workers, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Client(scheduler_file=scheduler_file, timeout=timeout) as client:
    client.wait_for_workers(n_workers, timeout=timeout)
    info = client.scheduler_info()
    print(f"cluster.sh: scheduler {info['address']} with {len(info['workers'])} workers")
    print(f"cluster.sh: dashboard {client.dashboard_link}")
EOF
    trap - EXIT
}

cmd_fit() {
    [ $# -ge 1 ] || die "usage: $0 fit STORE [dask-em fit arguments...]"
    cmd_up
    trap 'cmd_down' EXIT
    local address
    address=$(cmd_address)
    # The dask-em command line (the `dask-em` console script; `python -m dask_em` is the same).
    "$PYTHON" -m dask_em fit "$@" --scheduler "$address"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    address) cmd_address ;;
    fit) shift; cmd_fit "$@" ;;
    *) die "usage: $0 {up|address|down|fit STORE [ARGS...]}" ;;
esac
