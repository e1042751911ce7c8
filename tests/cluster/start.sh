#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the tests (run as root; no systemd, no cgroups).
#
#   tests/cluster/start.sh          # installs Debian's slurm + munge if missing, starts munged, slurmctld,
#                                   # slurmd, waits until the node is idle; prints the export line to use
#   tests/cluster/stop.sh           # ends the daemons by PID
#
# Idempotent: if the daemons are already up and the node answers, it only checks and returns.
# Everything lives in $TAMING_SLURM_DIR (default /tmp/taming-slurm); the config is also linked at
# /etc/slurm/slurm.conf because the executor plugin's job step drops SLURM_CONF before its inner srun.
set -euo pipefail

STATE="${TAMING_SLURM_DIR:-/tmp/taming-slurm}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE="$(hostname -s)"
FAKE_GPUS="${TAMING_SLURM_GPUS:-2}"
export SLURM_CONF="$STATE/slurm.conf"

log() { echo "[slurm-ci] $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (slurmd must start job processes as any user); try: sudo $0"
mkdir -p "$STATE"

# --- 1. packages -------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge (apt-get)"
  t0=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >"$STATE/apt.log" 2>&1 \
    || { tail -20 "$STATE/apt.log" >&2; die "apt-get install failed (log: $STATE/apt.log)"; }
  log "installed in $(( $(date +%s) - t0 )) s"
fi

alive() {  # alive PIDFILE: the process named in PIDFILE exists
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1; }

if alive "$STATE/munged.pid" && alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" \
    && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
  log "already running (node $NODE: $(node_state))"
  echo "export SLURM_CONF=$SLURM_CONF"
  exit 0
fi

mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/munge"

# --- 2. munge ----------------------------------------------------------------------------------------------
if ! alive "$STATE/munged.pid"; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; }
  chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
  # The socket folder must be world-readable (755): slurm's client commands connect to it as any user.
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  chown munge:munge "$STATE/munge"
  runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed"
  for _ in $(seq 50); do [ -s "$STATE/munge/munged.pid" ] && break; sleep 0.1; done
  cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
  munge -n | unmunge >/dev/null || die "munge does not work (log: $STATE/munge/munged.log)"
fi

# --- 3. config ---------------------------------------------------------------------------------------------
# What the node advertises (see slurm.conf.in): enough for profiles/slurm's per-rule requests, at least the
# real machine. Override with TAMING_SLURM_CPUS / TAMING_SLURM_MEM_MB / TAMING_SLURM_GPUS.
REAL_MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))
CPUS="${TAMING_SLURM_CPUS:-$(( $(nproc) > 16 ? $(nproc) : 16 ))}"
MEM="${TAMING_SLURM_MEM_MB:-$(( REAL_MEM > 131072 ? REAL_MEM : 131072 ))}"
sed -e "s|@HOST@|$NODE|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" \
    -e "s|@GPUS@|$FAKE_GPUS|g" "$HERE/slurm.conf.in" >"$STATE/slurm.conf"
# Fake GPUs: slurmd drops a GPU GRES without File=, and wants character devices there, so each one is a
# copy of /dev/null (1:3). SLURM counts, allocates and exports them (CUDA_VISIBLE_DEVICES); nothing uses them.
for i in $(seq 0 $(( FAKE_GPUS - 1 ))); do
  [ -c "$STATE/fakegpu$i" ] || { rm -f "$STATE/fakegpu$i"; mknod "$STATE/fakegpu$i" c 1 3 2>/dev/null \
    || touch "$STATE/fakegpu$i"; }  # no mknod in this container: a plain file works too (slurmd logs an error)
done
echo "NodeName=$NODE Name=gpu File=$STATE/fakegpu[0-$(( FAKE_GPUS - 1 ))]" >"$STATE/gres.conf"

mkdir -p /etc/slurm
for f in slurm.conf gres.conf; do
  if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
    die "/etc/slurm/$f is a real file (a site config?); move it away or run the tests on a scratch machine"
  fi
  ln -sfn "$STATE/$f" "/etc/slurm/$f"
done

# --- 4. daemons --------------------------------------------------------------------------------------------
# -c: forget jobs of a previous run (a test cluster has no state worth keeping).
if ! alive "$STATE/slurmctld.pid"; then
  slurmctld -c -f "$SLURM_CONF"
fi
if ! alive "$STATE/slurmd.pid"; then
  slurmd -f "$SLURM_CONF"
fi

# --- 5. wait for the node --------------------------------------------------------------------------------
for i in $(seq 120); do
  for d in slurmctld slurmd; do
    alive "$STATE/$d.pid" || { sleep 1; alive "$STATE/$d.pid"; } \
      || { tail -n 5 "$STATE/$d.log" >&2; die "$d is not running (log: $STATE/$d.log)"; }
  done
  st="$(node_state || true)"
  case "$st" in
    idle|mix|alloc) log "node $NODE is $st after ${i}s (CPUs=$CPUS RealMemory=$MEM Gres=gpu:$FAKE_GPUS)"
                    echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
    down*|drain*|drng*|fail*)
      scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
log "node $NODE not idle after 120 s (state: ${st:-none}); logs: $STATE/slurmctld.log $STATE/slurmd.log"
tail -n 5 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
