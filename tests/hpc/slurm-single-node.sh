#!/bin/sh
# A single-node Slurm on this machine, for tests/hpc/test_slurm.py (needs root; Debian 12 packages).
# Installs slurm-wlm and munge, writes a one-node slurm.conf for this host, starts munged, slurmctld and
# slurmd unless they run already (about three minutes on a fresh machine, mostly the install).
# "slurm-single-node.sh stop" stops the three daemons again.
set -eu
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "${1:-}" = stop ]; then
    for pidfile in /run/nodepilot-slurmd.pid /run/nodepilot-slurmctld.pid /run/munge/munged.pid; do
        running "$pidfile" && kill "$(cat "$pidfile")"
        rm -f "$pidfile"
    done
    exit 0
fi
command -v slurmctld >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
host=$(hostname -s)
state=/var/spool/nodepilot-slurmctld
mkdir -p /var/spool/nodepilot-slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/log/slurm
chown munge:munge /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=nodepilot
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=slurm
StateSaveLocation=$state
SlurmdSpoolDir=/var/spool/nodepilot-slurmd
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/nodepilot-slurmctld.pid
SlurmdPidFile=/run/nodepilot-slurmd.pid
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$(nproc) RealMemory=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1280)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
running /run/munge/munged.pid || /usr/sbin/munged -f
if ! running /run/nodepilot-slurmctld.pid; then
    rm -rf "$state" && mkdir -p "$state" && chown slurm:slurm "$state"  # a test cluster: no state kept
    /usr/sbin/slurmctld
fi
running /run/nodepilot-slurmd.pid || /usr/sbin/slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && exit 0; sleep 1; done
echo "slurm did not come up: see /var/log/slurm" >&2
exit 1
