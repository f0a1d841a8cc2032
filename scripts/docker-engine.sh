#!/usr/bin/env bash
# A Docker engine for the tests, started by hand (no systemd), and stopped again with all it started.
#   docker-engine.sh start DIR   prints DOCKER_HOST=unix://... of an engine that answers: the machine's
#                                own if one runs (then nothing is started, and stop leaves it alone), else
#                                Debian's dockerd (installed with apt if missing: root only), started
#                                with its own socket, exec root and pid file; its images stay in
#                                /var/lib/nodepilot-docker for the next run
#   docker-engine.sh stop DIR    stops the engine that start DIR started (its containers and its
#                                containerd with it); nothing if start found one running
# Exit 3: no engine can be started here (not root, no dockerd and no apt-get), said on stderr.
set -euo pipefail
action=${1:?usage: docker-engine.sh start|stop DIR}
dir=${2:?usage: docker-engine.sh start|stop DIR}
sock=/run/nodepilot-docker.sock
exec_root=/run/nodepilot-docker
data_root=${NODEPILOT_DOCKER_DATA:-/var/lib/nodepilot-docker}
docker=/usr/bin/docker  # Debian's CLI, the engine's own version
[ -x "$docker" ] || docker=docker

answers() { DOCKER_HOST=$1 timeout 10 "$docker" info >/dev/null 2>&1; }

stop() {
    if [ -f "$dir/dockerd.pid" ]; then
        pid=$(cat "$dir/dockerd.pid")
        if kill -0 "$pid" 2>/dev/null; then
            # its containers first, stopped (not killed: a restart policy would bring a killed one back
            # with the engine's next start)
            ids=$(DOCKER_HOST=unix://$sock timeout 30 "$docker" ps -q 2>/dev/null || true)
            [ -z "$ids" ] || DOCKER_HOST=unix://$sock timeout 60 "$docker" stop --time 5 $ids >/dev/null 2>&1 || true
            kill "$pid"  # dockerd stops its managed containerd and the shims as it ends
            for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        # the containerd of an engine that had to be killed
        cpid=$(cat "$exec_root/containerd/containerd.pid" 2>/dev/null || true)
        if [ -n "$cpid" ] && [ "$(cat "/proc/$cpid/comm" 2>/dev/null)" = containerd ]; then kill -9 "$cpid" || true; fi
        rm -f "$dir/dockerd.pid"
        rm -rf "$exec_root" 2>/dev/null || true
    fi
    # the default bridge, where this engine made it; the packet filter and forwarding as they were
    if [ -f "$dir/made-docker0" ]; then ip link delete docker0 2>/dev/null || true; rm -f "$dir/made-docker0"; fi
    if [ -f "$dir/iptables.before" ]; then iptables-restore <"$dir/iptables.before" || true; rm -f "$dir/iptables.before"; fi
    if [ -f "$dir/ip_forward.before" ]; then
        cat "$dir/ip_forward.before" >/proc/sys/net/ipv4/ip_forward || true
        rm -f "$dir/ip_forward.before"
    fi
}

save_network() {  # what dockerd changes: the filter and nat tables (its chains, FORWARD's policy), forwarding
    cat /proc/sys/net/ipv4/ip_forward >"$dir/ip_forward.before"
    command -v iptables-save >/dev/null || return 0
    for table in filter nat; do
        saved=$(iptables-save -t "$table" 2>/dev/null | grep -v '^#' || true)
        if [ -z "$saved" ]; then  # no such table yet: restored as empty
            chains=":INPUT ACCEPT [0:0]"$'\n'":FORWARD ACCEPT [0:0]"$'\n'":OUTPUT ACCEPT [0:0]"
            [ "$table" = nat ] && chains=":PREROUTING ACCEPT [0:0]"$'\n'":INPUT ACCEPT [0:0]"$'\n'":OUTPUT ACCEPT [0:0]"$'\n'":POSTROUTING ACCEPT [0:0]"
            saved="*$table"$'\n'"$chains"$'\n'"COMMIT"
        fi
        printf '%s\n' "$saved"
    done >"$dir/iptables.before"
}

case $action in
    stop) stop; exit 0 ;;
    start) ;;
    *) echo "unknown action $action (start|stop)" >&2; exit 2 ;;
esac
mkdir -p "$dir"
for host in "${DOCKER_HOST:-}" unix:///var/run/docker.sock "unix://$sock"; do
    if [ -n "$host" ] && answers "$host"; then echo "DOCKER_HOST=$host"; exit 0; fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "no Docker engine answers and starting one needs root" >&2
    exit 3
fi
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        echo "no dockerd here and no apt-get to install Debian's docker.io" >&2
        exit 3
    fi
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends docker.io docker-compose debootstrap >/dev/null; }
    apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null && apt_install; }  # stale package lists
fi
mkdir -p "$data_root" "$exec_root"
ip link show docker0 >/dev/null 2>&1 || touch "$dir/made-docker0"
save_network
dockerd --host "unix://$sock" --exec-root "$exec_root" --data-root "$data_root" --pidfile "$dir/dockerd.pid" \
    >"$dir/dockerd.log" 2>&1 &
for _ in $(seq 600); do  # bounded: 60 s
    if answers "unix://$sock"; then echo "DOCKER_HOST=unix://$sock"; exit 0; fi
    kill -0 $! 2>/dev/null || break
    sleep 0.1
done
echo "dockerd did not answer on $sock: $(tail -5 "$dir/dockerd.log")" >&2
stop
exit 1
