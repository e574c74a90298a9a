# Shared by the sbatch scripts: build and run the srun command of a clipgen entry point.
#   DRY_RUN=1 bash slurm/prior.sbatch experiment=coco_gpt2_medium   # print the command only
# Environment: RUN_DIR (default outputs/slurm/<job name>-<job id>, stable across requeues),
# GPUS_PER_NODE (default: SLURM's count, else 8), PYTHON (default python).

clipgen_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

clipgen_layout() {
  NODES=${SLURM_JOB_NUM_NODES:-1}
  GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${GPUS_PER_NODE:-8}}
  JOB_NAME=${SLURM_JOB_NAME:-clipgen}
  JOB_ID=${SLURM_JOB_ID:-local}
  RUN_DIR=${RUN_DIR:-outputs/slurm/${JOB_NAME}-${JOB_ID}}
  PYTHON=${PYTHON:-python}
}

# clipgen_run <srun options...> -- <command...>: print it, and run it unless DRY_RUN=1.
# srun runs in the background so that the batch shell can take SLURM's signals meanwhile.
clipgen_run() {
  local opts=()
  while [[ $# -gt 0 && $1 != "--" ]]; do opts+=("$1"); shift; done
  shift
  local cmd=(srun "${opts[@]}" "$@")
  echo "${cmd[*]}"
  if [[ ${DRY_RUN:-0} == 1 ]]; then return 0; fi
  cd "$(clipgen_root)" || return 1
  "${cmd[@]}" &
  local pid=$!
  wait "$pid"          # returns early when a trapped signal arrives
  wait "$pid"          # then waits for the tasks to finish their checkpoint
}

# Training: one task per GPU; Lightning's SLURM environment catches SIGUSR1 (sent by
# --signal=SIGUSR1@<s> before the time limit), saves run_dir/hpc_ckpt_<n>.ckpt and requeues
# the job; the requeued job keeps its id, hence its RUN_DIR, and ckpt_path=last resumes from
# the newest checkpoint there.
# The user's trainer= (fsdp, say) wins; DDP is the default when none is given.
clipgen_train() {
  clipgen_layout
  local trainer=(trainer=ddp) arg
  for arg in "$@"; do
    if [[ $arg == trainer=* ]]; then trainer=(); fi
  done
  clipgen_run --nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --kill-on-bad-exit=1 -- \
    "$PYTHON" train.py "$@" "${trainer[@]}" trainer.devices="$GPUS_PER_NODE" \
    trainer.num_nodes="$NODES" ckpt_path=last hydra.run.dir="$RUN_DIR"
}

# Each script's arguments are Hydra overrides. An sbatch option given to the script instead of
# to sbatch (`sbatch slurm/prior.sbatch --nodes=4`) would reach Hydra: refuse it. Sourced
# without arguments, this file sees the script's own.
clipgen_check_args() {
  local arg
  for arg in "$@"; do
    if [[ $arg == -* ]]; then
      echo "error: $arg is not a Hydra override; sbatch options go before the script:" \
        "sbatch $arg slurm/<script>.sbatch <overrides>" >&2
      return 2
    fi
  done
}
clipgen_check_args "$@" || exit 2
