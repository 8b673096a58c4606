#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm and munge), for the cluster tests
# and for trying `./run_all.sh --executor slurm` before a real cluster:
#   scripts/slurm_local.sh install   apt-get the packages (root; once)
#   scripts/slurm_local.sh start     munge key, slurm.conf (this host, its CPUs), munged, slurmctld,
#                                    slurmd; waits until the node is idle
#   scripts/slurm_local.sh stop      stops the daemons
#   scripts/slurm_local.sh status    sinfo
# The cluster has two partitions, `debug` (default, no time limit) and `short` (5-minute limit, so
# that a job asking for more is refused at submission), and no accounting database
# (mirl follows its jobs with squeue, not sacct). Needs root (it writes /etc/slurm/slurm.conf and
# runs the daemons as root).
set -euo pipefail
conf_dir=/etc/slurm
conf="$conf_dir/slurm.conf"
spool=/var/spool/slurm-mirl
logs=/var/log/slurm-mirl

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    return
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p "$conf_dir" "$spool/ctld" "$spool/d" "$logs"
  cat > "$conf" <<EOF
# written by mirl's scripts/slurm_local.sh: a one-node cluster on $host
ClusterName=mirl
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=$spool/slurmctld.pid
SlurmdPidFile=$spool/slurmd.pid
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=defer_batch
ReturnToService=2
JobRequeue=1
MpiDefault=none
KillWait=5
MinJobAge=300
EnforcePartLimits=ALL
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=short Nodes=$host Default=NO MaxTime=5 State=UP OverSubscribe=NO
EOF
}

start() {
  install
  write_conf
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged || /usr/sbin/munged --force
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo
      return
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "error: the local Slurm node did not come up; see $logs" >&2
  sinfo >&2 || true
  exit 2
}

stop() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
