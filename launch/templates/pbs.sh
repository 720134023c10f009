#!/bin/bash -l
# smilejax batch job for {{system}}, written by `smilejax launch`. Submit it again with: qsub {{script}}
#
# PBS sends no warning before the walltime, so every rank runs under rank.sh, which warns the run
# (USR1) {{signal_margin_s}} s before the limit; the run then checkpoints and exits 75, and this script
# submits its successor (to start when this job has ended), which resumes from the checkpoint, until
# the configured steps are done or {{max_requeues}} resubmissions have happened.
{{directives}}

RUN_DIR={{run_dir}}
CONFIG=$RUN_DIR/launch/config.yaml
RESTART=${SMILEJAX_RESTART_COUNT:-0}
# The walltime runs from now; rank.sh signals the run at this Unix time.
export SMILEJAX_DEADLINE=$(( $(date +%s) + {{time_s}} - {{signal_margin_s}} ))
# PBS copies its own log only at the end and overwrites it on resubmission: keep one log per job here.
exec >>"$RUN_DIR/launch/pbs-${PBS_JOBID%%.*}.out" 2>&1

# ---- software and environment (from the system file)
{{setup}}
{{env}}

cd {{workdir}} || exit 1
NODES=$(sort -u "$PBS_NODEFILE" | wc -l)
echo "smilejax-launch: job $PBS_JOBID attempt $((RESTART + 1)) on $NODES node(s): $(sort -u "$PBS_NODEFILE" | paste -sd,)"

# ---- preflight: one rank on the first node checks that JAX sees the GPUs a rank should (else a job
# would train on the CPU for the whole allocation); its report goes into this log
{{preflight}}

# ---- node-local folders the system file names (caches), made on every node
{{node_dirs}}

# ---- staging: one rank per node copies the inputs to node-local storage
{{stage}}

# ---- training: {{processes}} process(es), {{tasks_per_node}} per node
mpiexec -n $((NODES * {{tasks_per_node}})) --ppn {{tasks_per_node}} {{launcher_args}}{{rank_wrapper}} {{python}} -m smilejax train "$CONFIG"{{overrides}}
rc=$?
echo "smilejax-launch: training exited with code $rc"

{{unstage}}

# ---- resubmit: 75 means "stopped before the limit after a checkpoint"
if [[ $rc -eq 75 ]]; then
    if (( RESTART < {{max_requeues}} )); then
        echo "smilejax-launch: submitting the successor of job $PBS_JOBID (restart $((RESTART + 1)) of at most {{max_requeues}})"
        qsub -W depend=afterany:"$PBS_JOBID" -v SMILEJAX_RESTART_COUNT=$((RESTART + 1)) {{script}} && exit 0
        echo "smilejax-launch: qsub failed; resubmit by hand: qsub {{script}}" >&2
    else
        echo "smilejax-launch: {{max_requeues}} resubmissions done; resubmit to go on: qsub {{script}}" >&2
    fi
fi
exit $rc
