#!/usr/bin/env bash
# bash scripts/slurm_local.sh          (make slurm-local; Debian/Ubuntu, as root or with sudo)
# bash scripts/slurm_local.sh --stop   (stops slurmd, slurmctld and munged again)
#
# A single-host Slurm on this machine, to run scripts/slurm_extract.sbatch (and tests/test_slurm.py)
# without a cluster. Installs slurm-wlm and munge when missing, creates a munge key when missing,
# writes /etc/slurm/slurm.conf (one node = this host with its real CPUs and a bit less than its
# memory, one default partition, no cgroups and no systemd: made for containers), starts munged,
# slurmctld and slurmd as plain daemons and waits until sinfo shows the node up. Running it again
# is fine: what is already there is kept, daemons already running are left alone (restarted only
# when the config it writes changed). It refuses to replace a slurm.conf it did not write.
# Not for a real cluster: SlurmUser is root and there is no accounting (sacct) database.
#   SLURM_LOCAL_TIMEOUT=60   seconds to wait for the node to come up
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARK="# written by CREMA scripts/slurm_local.sh"
LOG_DIR=/var/log/slurm
CTLD_LOG=$LOG_DIR/slurmctld.log
SLURMD_LOG=$LOG_DIR/slurmd.log
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  die "needs root (or sudo) to install packages and start the daemons"
fi

# pid from a pid file, printed only when that process is alive and has the expected name.
alive_pid() {  # <pidfile> <comm>
  local pid
  pid=$($SUDO cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

stop_daemon() {  # <pidfile> <comm>
  local pid
  pid=$(alive_pid "$1" "$2") || { say "$2 not running"; return 0; }
  $SUDO kill -TERM "$pid"
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then $SUDO kill -KILL "$pid"; fi
  $SUDO rm -f "$1"
  say "stopped $2 (pid $pid)"
}

if [ "${1:-}" = "--stop" ]; then
  stop_daemon "$SLURMD_PID" slurmd
  stop_daemon "$CTLD_PID" slurmctld
  stop_daemon "$MUNGE_PID" munged
  exit 0
elif [ $# -gt 0 ]; then
  die "usage: $0 [--stop]"
fi

t0=$(date +%s)

# 1. packages (only when missing)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "no apt-get: install slurm (slurmctld, slurmd, client) and munge yourself"
  say "installing slurm-wlm munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && \
         $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
fi

# 2. munge: a key, then the daemon (as the munge user, as its package intends)
if ! $SUDO test -s /etc/munge/munge.key; then
  say "creating /etc/munge/munge.key"
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  $SUDO chown munge:munge /etc/munge/munge.key
  $SUDO chmod 0400 /etc/munge/munge.key
fi
if ! $SUDO munge -n 2>/dev/null | $SUDO unmunge >/dev/null 2>&1; then
  $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
  $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
  $SUDO rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
  say "starting munged"
  $SUDO runuser -u munge -- munged
  for _ in $(seq 50); do $SUDO munge -n 2>/dev/null | $SUDO unmunge >/dev/null 2>&1 && break; sleep 0.2; done
  $SUDO munge -n 2>/dev/null | $SUDO unmunge >/dev/null 2>&1 || die "munged did not come up (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf for this host: slurmd -C reports what slurmd itself will detect
host=$(hostname -s)
hw=$($SUDO slurmd -C | head -1)
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$hw"; }
cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
[ -n "$cpus" ] && [ -n "$mem" ] || die "could not read the hardware from 'slurmd -C': $hw"
# Leave 5% (at least 256 MB) to the system, or slurmd would drain the node on the slightest difference.
real_mem=$(( mem - (mem / 20 > 256 ? mem / 20 : 256) ))

new_conf=$(cat <<EOF
$MARK: a single-host Slurm on $host.
# Re-run the script to rewrite it; delete this file to hand /etc/slurm back to your own config.
ClusterName=crema-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
# No cgroups and no systemd (containers usually have neither).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Finished jobs stay visible to 'scontrol show job' for 10 minutes.
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$real_mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)

changed=0
if $SUDO test -e "$CONF"; then
  $SUDO grep -qF "$MARK" "$CONF" || die "$CONF exists and was not written by this script; not touching it"
  [ "$($SUDO cat "$CONF")" = "$new_conf" ] || changed=1
else
  changed=1
fi
if [ "$changed" = 1 ]; then
  say "writing $CONF ($host: $cpus CPUs, RealMemory=$real_mem MB of $mem)"
  $SUDO mkdir -p "$CONF_DIR"
  printf '%s\n' "$new_conf" | $SUDO tee "$CONF" >/dev/null
fi
$SUDO mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"

# 4. the daemons (restarted when the config changed under them)
if [ "$changed" = 1 ]; then
  if alive_pid "$SLURMD_PID" slurmd >/dev/null; then stop_daemon "$SLURMD_PID" slurmd; fi
  if alive_pid "$CTLD_PID" slurmctld >/dev/null; then stop_daemon "$CTLD_PID" slurmctld; fi
fi
if ! alive_pid "$CTLD_PID" slurmctld >/dev/null; then
  say "starting slurmctld (log: $CTLD_LOG)"
  $SUDO slurmctld
fi
for _ in $(seq $((TIMEOUT * 2))); do $SUDO scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.5; done
$SUDO scontrol ping 2>/dev/null | grep -q "is UP" \
  || die "slurmctld did not answer 'scontrol ping' within ${TIMEOUT}s; see $CTLD_LOG"
if ! alive_pid "$SLURMD_PID" slurmd >/dev/null; then
  say "starting slurmd (log: $SLURMD_LOG)"
  $SUDO slurmd
fi

# 5. ready when sinfo shows the node up and schedulable (idle, or running jobs already)
state=""
resumed=0
deadline=$(( $(date +%s) + TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    down|drained|draining)
      # e.g. left down by an earlier unclean stop: resume once, then report if it stays down
      if [ "$resumed" = 0 ]; then $SUDO scontrol update nodename="$host" state=resume 2>/dev/null || true; resumed=1; fi ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) reason=$(scontrol show node "$host" 2>/dev/null | grep -o "Reason=.*" || true)
     die "node $host is '${state:-unknown}' after ${TIMEOUT}s, not idle ${reason:+($reason)}; see $SLURMD_LOG and $CTLD_LOG" ;;
esac
say "ready in $(( $(date +%s) - t0 ))s: node $host is $state"
sinfo
