#!/usr/bin/env bash
# Bring up a single-node Slurm (slurmctld + slurmd + munge) on this Debian machine, for the
# tests marked `slurm`. Idempotent: a second call returns at once when the node is already up.
#
#   tests/slurm/start-slurm.sh          # install if needed, configure, start, wait for "idle"
#   tests/slurm/start-slurm.sh --stop   # stop the daemons this script started
#
# Needs root (apt-get, /etc/slurm, daemons). Logs: /var/log/slurm/{slurmctld,slurmd}.log.
# No accounting daemon: job states come from slurmctld (squeue), which keeps finished jobs for
# MinJobAge seconds; the Snakemake profile (slurm/config.yaml) is set up for that.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
PIDDIR=/run/slurm
TIMEOUT=${SLURM_START_TIMEOUT:-60}

say() { echo "start-slurm: $*" >&2; }

node_idle() {
    # "idle" or "mixed"/"allocated" all mean slurmd registered and the node takes jobs.
    sinfo --noheader --format=%T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

stop() {
    for daemon in slurmd slurmctld; do
        if [[ -f $PIDDIR/$daemon.pid ]]; then
            kill "$(cat "$PIDDIR/$daemon.pid")" 2>/dev/null || true
            rm -f "$PIDDIR/$daemon.pid"
        fi
    done
}

if [[ ${1:-} == --stop ]]; then
    stop
    exit 0
fi

if command -v sinfo >/dev/null && node_idle; then
    say "Slurm already up: $(sinfo --noheader --format='%P %D %T %c CPUs')"
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    say "needs root to install and start Slurm"
    exit 1
fi

# --- packages (Debian 12: Slurm 22.05) ---------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    say "installing slurmctld slurmd slurm-client munge"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null; }
fi

# --- munge: authentication between the Slurm commands and daemons -------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { say "munged did not start (see /var/log/munge/munged.log)"; exit 1; }
fi

# --- slurm.conf: one node with this machine's cores and memory -------------------------------
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
real_mem=$((mem_mb * 9 / 10))
# Jobs that give no --mem get this much per CPU instead of the whole node (the Slurm default),
# so that small jobs can share the node.
def_mem=$((real_mem / cpus / 2))
mkdir -p /etc/slurm "$LOGDIR" "$STATE" "$SPOOL" "$PIDDIR"
# Two placeholder GPUs (GRES backed by empty files, no device behind them) so that the GPU
# requests of the Snakemake profile and of slurm/train-ddp.sbatch are scheduled as on a GPU
# cluster; torch finds no CUDA device in those jobs and runs on the CPU with gloo.
GPUS=2
for i in $(seq 0 $((GPUS - 1))); do touch "$PIDDIR/fakegpu$i"; done
echo "NodeName=localhost Name=gpu File=$PIDDIR/fakegpu[0-$((GPUS - 1))]" >/etc/slurm/gres.conf.new
cat >"$CONF.new" <<EOF
# Written by tests/slurm/start-slurm.sh: a single-node test cluster, no accounting daemon.
ClusterName=stemstrain-test
GresTypes=gpu
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long [s]: status checks without accounting need it.
MinJobAge=300
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
DefMemPerCPU=$def_mem
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:$GPUS RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=0
for f in "$CONF" /etc/slurm/gres.conf; do
    if cmp -s "$f.new" "$f"; then
        rm -f "$f.new"
    else
        mv "$f.new" "$f"
        conf_changed=1
    fi
done

# --- daemons -------------------------------------------------------------------------------
running() { [[ -f $PIDDIR/$1.pid ]] && kill -0 "$(cat "$PIDDIR/$1.pid")" 2>/dev/null; }
if [[ $conf_changed == 1 ]]; then
    stop
    sleep 1
fi
if ! running slurmctld; then
    say "starting slurmctld"
    # -i: ignore state files written by an earlier, differently configured slurmctld.
    setsid slurmctld -D -i </dev/null >>"$LOGDIR/slurmctld.out" 2>&1 &
    echo $! >"$PIDDIR/slurmctld.pid"
fi
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! running slurmd; then
    say "starting slurmd"
    setsid slurmd -D -N localhost </dev/null >>"$LOGDIR/slurmd.out" 2>&1 &
    echo $! >"$PIDDIR/slurmd.pid"
fi

for _ in $(seq $((TIMEOUT * 2))); do
    if node_idle; then
        say "Slurm up: $(sinfo --noheader --format='%P %D %T %c CPUs %m MB')"
        exit 0
    fi
    # A node left DOWN/DRAIN by an earlier run of the daemons is put back in service.
    if sinfo --noheader --format=%T 2>/dev/null | grep -Eq '^(down|drain|drained)'; then
        scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
    fi
    sleep 0.5
done
say "Slurm did not come up within ${TIMEOUT}s; sinfo: $(sinfo 2>&1 | tail -n +2)"
tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
