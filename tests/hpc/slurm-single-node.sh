#!/bin/sh
# A private single-node Slurm for tests/hpc/test_slurm.py (needs root; Debian 12 packages).
#   slurm-single-node.sh start DIR   installs slurm-wlm and munge if missing (about three minutes on a
#                                    fresh machine, mostly the install), starts munged, slurmctld and
#                                    slurmd, all configured and kept under DIR; prints SLURM_CONF=...
#   slurm-single-node.sh stop DIR    stops them and removes DIR
# Nothing of the machine's own Slurm or MUNGE is read or changed: the configuration (SLURM_CONF), the
# MUNGE key and socket, the state, spool, logs and pid files all live in DIR, the daemons listen on
# free ports. The Slurm commands of the tests find this cluster through SLURM_CONF.
set -eu
action=${1:?usage: slurm-single-node.sh start|stop DIR}
dir=${2:?usage: slurm-single-node.sh start|stop DIR}
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {  # $1: pid file; TERM, then KILL after 10 s
    running "$1" || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_all() {
    [ -d "$dir" ] || return 0
    for name in slurmd slurmctld munged; do stop_daemon "$dir/$name.pid"; done
    rm -rf "$dir"
}

case $action in
    stop) stop_all; exit 0 ;;
    start) stop_all ;;  # a test cluster: what an earlier run left is not kept
    *) echo "unknown action $action (start|stop)" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "a single-node Slurm needs root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends slurm-wlm munge >/dev/null; }
    apt_install || { apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null && apt_install; }  # stale package lists
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir"
# a key of this cluster only (MUNGE wants a regular file of 1024 bytes or more, readable by its owner only)
[ -f "$dir/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge.key"; chmod 600 "$dir/munge.key"; }
host=$(hostname -s)
cat > "$dir/slurm.conf" <<CONF
ClusterName=nodepilot
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$(nproc) RealMemory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1280)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
/usr/sbin/munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 1
done
echo "slurm did not come up: see $dir/log" >&2
exit 1
