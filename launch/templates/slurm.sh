#!/bin/bash
# smilejax batch job for {{system}}, written by `smilejax launch`. Submit it again with: sbatch {{script}}
#
# Slurm sends USR1 about {{signal_margin_s}} s before the time limit (rank.sh holds it for a run that is still
# starting); the run then checkpoints and exits 75, and this script requeues the job (same job id),
# which resumes from the checkpoint, until the configured steps are done or {{max_requeues}} requeues
# have happened.
{{directives}}

# ---- software and environment (from the system file)
{{setup}}
{{env}}

RUN_DIR={{run_dir}}
CONFIG=$RUN_DIR/launch/config.yaml
RESTART=${SLURM_RESTART_COUNT:-0}
NODES=${SLURM_JOB_NUM_NODES:-{{nodes}}}
echo "smilejax-launch: job $SLURM_JOB_ID attempt $((RESTART + 1)) on $NODES node(s) ${SLURM_JOB_NODELIST:-}"

# ---- preflight: one task on the first node checks that JAX sees the GPUs a rank should (else a job
# would train on the CPU for the whole allocation); its report goes into this log
{{preflight}}

# ---- node-local folders the system file names (caches), made on every node
{{node_dirs}}

# ---- staging: one task per node copies the inputs to node-local storage
{{stage}}

# ---- training: {{processes}} process(es), {{tasks_per_node}} per node
# --wait, not --kill-on-bad-exit: a rank that exits 75 first must not get the others killed while they
# finish; a crashed rank still ends the step within 60 s.
srun --wait=60 --nodes="$NODES" --ntasks=$((NODES * {{tasks_per_node}})) --ntasks-per-node={{tasks_per_node}} {{launcher_args}}{{rank_wrapper}} {{python}} -m smilejax train "$CONFIG"{{overrides}}
rc=$?
echo "smilejax-launch: training exited with code $rc"

{{unstage}}

# ---- requeue: 75 means "stopped before the limit after a checkpoint"
if [[ $rc -eq 75 ]]; then
    if (( RESTART < {{max_requeues}} )); then
        echo "smilejax-launch: requeueing job $SLURM_JOB_ID (restart $((RESTART + 1)) of at most {{max_requeues}})"
        scontrol requeue "$SLURM_JOB_ID" && exit 0
        echo "smilejax-launch: scontrol requeue failed; resubmit by hand: sbatch {{script}}" >&2
    else
        echo "smilejax-launch: {{max_requeues}} requeues done; resubmit to go on: sbatch {{script}}" >&2
    fi
fi
exit $rc
