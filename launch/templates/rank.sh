#!/bin/bash
# One rank of a smilejax job (srun and mpiexec start it on every rank):  rank.sh COMMAND [ARG ...]
#
# The scheduler's warning (SIGUSR1) may come before COMMAND has installed its handler; by default it
# would kill the process. So COMMAND starts with USR1 ignored, and once a warning has come this
# wrapper repeats it every few seconds until COMMAND ends: the first repeat after the handler is in
# place makes the run checkpoint and exit 75 (smilejax's StopWatch then restores the inherited "ignore",
# so later repeats cannot hit the exiting process). With $SMILEJAX_DEADLINE (Unix seconds; PBS has no
# warning signal) the wrapper warns itself at that time. SIGTERM and SIGINT are passed on. The exit
# code is COMMAND's.

trap '' USR1 # inherited by COMMAND
"$@" &
child=$!
warned=
trap 'warned=1; kill -USR1 $child 2>/dev/null' USR1
trap 'kill -TERM $child 2>/dev/null' TERM
trap 'kill -INT $child 2>/dev/null' INT

timer=
if [[ -n ${SMILEJAX_DEADLINE:-} ]]; then
    delay=$((SMILEJAX_DEADLINE - $(date +%s)))
    ((delay < 0)) && delay=0
    # Holds no output pipe of the launcher; ending the timer ends its sleep.
    (
        sleep "$delay" &
        trap 'kill $! 2>/dev/null; exit 0' TERM
        wait $! && kill -USR1 $$ 2>/dev/null
    ) </dev/null >/dev/null 2>&1 &
    timer=$!
fi

tick=0
while kill -0 "$child" 2>/dev/null; do
    sleep 1 &
    wait $! # not a plain sleep: a trapped signal is handled at once
    tick=$((tick + 1))
    if [[ -n $warned ]] && ((tick % 5 == 0)); then
        kill -USR1 "$child" 2>/dev/null
    fi
done
wait "$child"
rc=$?
[[ -n $timer ]] && kill "$timer" 2>/dev/null
exit "$rc"
