#!/usr/bin/env bash
# Runs one node in the foreground with a demo web service on it: three
# replicas of busybox httpd in real containers (containerd), each publishing
# its port 80 on a host port. Ctrl-C stops swarmd; the containers keep
# running and the next run adopts them. State lives in $STATE_DIR (default
# ./.run/state) and survives restarts. Needs root (containerd, netns, nft).
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE_DIR:-$PWD/.run/state}
sock=$state/swarmd.sock
ctl() { bin/swarmctl --socket "$sock" "$@"; }
mkdir -p "$state"
bin/swarmd --state-dir "$state" --listen-remote-api 127.0.0.1:4242 "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
for _ in $(seq 1 100); do
	ctl cluster inspect >/dev/null 2>&1 && break
	kill -0 $pid 2>/dev/null || { wait $pid; exit 1; }
	sleep 0.1
done

# The image: busybox with a web root, built from the host's busybox-static
# and imported into swarmd's containerd namespace (no registry needed).
ctrd=/run/containerd/containerd.sock
[[ -S $state/containerd/containerd.sock ]] && ctrd=$state/containerd/containerd.sock
if ! ctr -a "$ctrd" -n swarmd images ls -q | grep -qx docker.io/library/busybox:latest; then
	bin/busybox-image -o "$state/busybox.tar" >/dev/null
	ctr -a "$ctrd" -n swarmd images import --base-name docker.io/library/busybox "$state/busybox.tar" >/dev/null
fi

if ! ctl service inspect web >/dev/null 2>&1; then
	ctl service create --name web --replicas 3 --publish mode=host,target=80 \
		--image busybox:latest -- httpd -f -p 80 -h /www >/dev/null
fi
# Wait (up to 30 s) for the replicas to run before showing them.
for _ in $(seq 1 300); do
	ctl service ls | grep -q ' 3/3 ' && break
	sleep 0.1
done
ctl service ls
echo
ctl service ps web
echo
for port in $(ctl service ps web | sed -n 's/.*\*:\([0-9]*\)->80\/tcp.*/\1/p'); do
	echo "curl http://127.0.0.1:$port/  ->  $(curl -s -m 2 "http://127.0.0.1:$port/" || echo unreachable)"
done
echo
echo "swarmd runs with state in $state. Try: bin/swarmctl --socket $sock service logs web"
wait $pid
