#!/usr/bin/env bash
# Stop the test cluster started by tests/cluster/start.sh: ends slurmd, slurmctld and munged by their PIDs.
# Idempotent; leaves the state folder ($TAMING_SLURM_DIR, default /tmp/taming-slurm) for post-mortems.
set -uo pipefail
STATE="${TAMING_SLURM_DIR:-/tmp/taming-slurm}"

stop() {  # stop NAME PIDFILE
  local pid
  [ -s "$2" ] || return 0
  pid="$(cat "$2")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "[slurm-ci] stopped $1 ($pid)" >&2
  fi
  rm -f "$2"
}

stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop munged "$STATE/munged.pid"
# Links made by start.sh (only if they still point into our state folder).
for f in slurm.conf gres.conf; do
  if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$STATE/$f" ]; then rm -f "/etc/slurm/$f"; fi
done
exit 0
