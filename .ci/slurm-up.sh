#!/usr/bin/env bash
# A one-node SLURM cluster on 127.0.0.1 for the tests of the `slurm` launcher (tests/test_slurm.py), as root,
# without systemd or cgroups. Installs Debian's slurmctld/slurmd/munge where missing, writes slurm.conf,
# starts munged, slurmctld and slurmd and records their pids in $HARNESS_SLURM_STATE/pids (.ci/slurm-down.sh
# stops exactly those). Prints how long each part took.
set -euo pipefail
STATE=${HARNESS_SLURM_STATE:-/run/alp-kd-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# alp-kd test cluster (.ci/slurm-up.sh)"
start=$(date +%s.%N)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
  || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
installed=$(date +%s.%N)

if [ -e "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
  echo "slurm-up: $CONF exists and is not ours; not touching this machine's SLURM" >&2
  exit 1
fi
if [ -s "$STATE/pids" ]; then  # left by a run that was killed before its trap: stop what of it still runs
  echo "slurm-up: stopping the daemons an earlier run left ($STATE/pids)" >&2
  bash "$(dirname "$0")/slurm-down.sh"
fi
install -d -m 0755 "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# munge: the key Debian's package created, or a new one
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
runuser -u munge -- munged --pid-file=/run/munge/munged.pid
for _ in $(seq 100); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
echo "munged $(cat /run/munge/munged.pid)" >>"$STATE/pids"

node=$(hostname -s)
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cat >"$CONF" <<CONFIG
$MARK
ClusterName=alpkd
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=cred_expire=5
# the scheduler every 2 s instead of 60 s: a requeued worker starts again within seconds
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job with no --mem takes all the node's memory and the workers would run one at a time
DefMemPerCPU=256
# no cgroups, no systemd here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# scontrol requeue needs it
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
# jobs of 'urgent' preempt (requeue) jobs of 'debug', which get their --signal first
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${node} NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$((memory * 9 / 10)) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10
CONFIG

slurmctld -c  # -c: forget the job state of an earlier cluster
for _ in $(seq 150); do [ -s "$STATE/slurmctld.pid" ] && scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
echo "slurmctld $(cat "$STATE/slurmctld.pid")" >>"$STATE/pids"
slurmd
for _ in $(seq 150); do [ "$(sinfo -h -n "$node" -o %t 2>/dev/null | head -1)" = idle ] && break; sleep 0.2; done
echo "slurmd $(cat "$STATE/slurmd.pid")" >>"$STATE/pids"
up=$(date +%s.%N)
sinfo -h -o "%R %D %c %t" | sed 's/^/slurm-up: /'
awk -v a="$start" -v b="$installed" -v c="$up" 'BEGIN { printf "slurm-up: install %.1f s, start %.1f s\n", b - a, c - b }'
