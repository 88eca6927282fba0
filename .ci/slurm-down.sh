#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started, by the pids it recorded (slurmd, slurmctld, then munged); nothing else.
STATE=${HARNESS_SLURM_STATE:-/run/alp-kd-slurm}
[ -s "$STATE/pids" ] || exit 0
tac "$STATE/pids" | while read -r name pid; do
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "slurm-down: $name ($pid) did not stop; SIGKILL" >&2; kill -KILL "$pid"; }
done
rm -f "$STATE/pids"
exit 0
