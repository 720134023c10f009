#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, for tests and for trying `srun` launches without a cluster.
#
#   bash launch/local_slurm.sh start  [DIR]   # munge + slurmctld + slurmd; waits until the node is idle
#   bash launch/local_slurm.sh stop   [DIR]
#   bash launch/local_slurm.sh status [DIR]
#
# Then point the Slurm clients at it:  export SLURM_CONF=DIR/slurm.conf ; srun -n 2 hostname
#
# Needs root (it is meant for containers and CI machines) and the Debian packages slurmd, slurmctld,
# slurm-client and munge. Everything it writes (slurm.conf, state, spool, pid files, logs) lives under
# DIR (default /tmp/smilejax-slurm); only munged uses its system paths (/etc/munge key, /run/munge socket),
# and stop ends munged only if start launched it. One cluster per machine: the Slurm ports are the defaults.
# The partition oversubscribes cores (OverSubscribe=FORCE) so several small jobs run at once on a 2-core
# machine, and memory is not a scheduled resource; job clean-up timers are short so tests stay quick.
set -euo pipefail

cmd=${1:-status}
DIR=$(realpath -m "${2:-/tmp/smilejax-slurm}")
CONF=$DIR/slurm.conf
LOGS=$DIR/log
export SLURM_CONF=$CONF

die() {
    echo "local_slurm: $*" >&2
    echo "local_slurm: logs are in $LOGS (slurmctld.log, slurmd.log) and /var/log/munge/munged.log" >&2
    exit 1
}

# True when the process in pid file $1 is alive.
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }

# The node takes jobs (idle, or already running some).
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated) ]]; }

start_munge() {
    munge_ok && return 0
    # munged refuses to run as root and insists on key/dir ownership by its own user.
    if [[ ! -f /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
    touch "$DIR/munged.ours"   # so that stop ends only a munged this script started
    for _ in $(seq 20); do munge_ok && return 0; sleep 0.25; done
    die "munged started but 'munge -n | unmunge' fails"
}

write_conf() {
    local host cpus
    host=$(hostname -s)
    cpus=$(nproc)
    mkdir -p "$DIR/state" "$DIR/spool" "$LOGS"
    cat >"$CONF" <<EOF
# Written by launch/local_slurm.sh: a one-node test cluster, not for production.
ClusterName=smilejax-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Cores only: memory is not scheduled, so jobs need no --mem.
SelectTypeParameters=CR_Core
ReturnToService=2
# Short timers: tests start and end many small jobs.
KillWait=2
MinJobAge=5
InactiveLimit=0
Waittime=0
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host CPUs=$cpus State=UNKNOWN
# FORCE:4 lets up to four jobs share each core (two 2-task jobs at once on 2 cores).
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start() {
    [[ $EUID -eq 0 ]] || die "must run as root (slurmd and munged are started directly)"
    export PATH=$PATH:/usr/sbin
    local bin
    for bin in slurmctld slurmd munged sinfo srun; do
        command -v "$bin" >/dev/null || die "$bin not found: install the Debian packages slurmd slurmctld slurm-client munge"
    done
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && node_ready; then
        echo "local_slurm: already running (SLURM_CONF=$CONF)"
        return 0
    fi
    mkdir -p "$DIR"
    if ! alive "$DIR/slurmctld.pid" && pgrep -x slurmctld >/dev/null; then
        die "another slurmctld holds the Slurm ports: $(pgrep -a -x slurmctld | head -n 1) (stop that one first)"
    fi
    start_munge
    alive "$DIR/slurmctld.pid" || write_conf
    # A daemon writes its pid file only after it has forked: remove a stale one (an earlier run's,
    # whose pid is dead) so that the wait below cannot mistake it for the new daemon having exited.
    if ! alive "$DIR/slurmctld.pid"; then
        rm -f "$DIR/slurmctld.pid"
        slurmctld -c -f "$CONF" || die "slurmctld failed to start"   # -c: fresh state, no stale jobs
    fi
    if ! alive "$DIR/slurmd.pid"; then
        rm -f "$DIR/slurmd.pid"
        slurmd -f "$CONF" || die "slurmd failed to start"
    fi
    local state="" daemon
    for _ in $(seq 120); do
        for daemon in slurmctld slurmd; do  # no pid file yet: still starting
            [[ ! -f $DIR/$daemon.pid ]] || alive "$DIR/$daemon.pid" || die "$daemon exited"
        done
        state=$(node_state)
        if [[ $state =~ ^(idle|mixed|allocated) ]]; then
            echo "local_slurm: node $(hostname -s) $state; export SLURM_CONF=$CONF"
            return 0
        fi
        # A node left down/drained by an earlier run comes back once resumed.
        [[ $state == down* || $state == drain* ]] && scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
        sleep 0.5
    done
    die "node not idle after 60 s (state: '${state:-no answer from slurmctld}')"
}

stop_pid() {
    local pidfile=$1 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$pidfile"
}

stop() {
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    # A munged that was already running belongs to the system; leave it.
    if [[ -f $DIR/munged.ours ]]; then
        cp /run/munge/munged.pid "$DIR/munged.pid" 2>/dev/null && stop_pid "$DIR/munged.pid"
        rm -f "$DIR/munged.ours"
    fi
    echo "local_slurm: stopped"
}

status() {
    if alive "$DIR/slurmctld.pid"; then
        echo "local_slurm: slurmctld running (SLURM_CONF=$CONF)"
        sinfo -N || true
    else
        echo "local_slurm: not running (DIR=$DIR)"
        return 3
    fi
}

case $cmd in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status [DIR]" >&2; exit 2 ;;
esac
