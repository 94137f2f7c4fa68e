#!/usr/bin/env bash
# Runs one node in the foreground with a demo service on it. Ctrl-C stops it.
# State lives in $STATE_DIR (default ./.run/state) and survives restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE_DIR:-$PWD/.run/state}
sock=$state/swarmd.sock
mkdir -p "$state"
bin/swarmd --state-dir "$state" --listen-remote-api 127.0.0.1:4242 --executor sim "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 100); do
	bin/swarmctl --socket "$sock" cluster inspect >/dev/null 2>&1 && break
	kill -0 $pid 2>/dev/null || { wait $pid; exit 1; }
	sleep 0.1
done
if ! bin/swarmctl --socket "$sock" service inspect web >/dev/null 2>&1; then
	bin/swarmctl --socket "$sock" service create --name web --replicas 3 --image busybox:latest -- sleep 1d
fi
# Wait (up to 10 s) for the replicas to run before showing them.
for _ in $(seq 1 100); do
	bin/swarmctl --socket "$sock" service ls | grep -q ' 3/3 ' && break
	sleep 0.1
done
bin/swarmctl --socket "$sock" service ls
echo
bin/swarmctl --socket "$sock" service ps web
echo
echo "swarmd runs with state in $state. Try: bin/swarmctl --socket $sock node ls"
wait $pid
