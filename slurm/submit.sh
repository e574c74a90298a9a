#!/bin/bash
# Submit a clipgen job: creates the log folder the scripts' #SBATCH --output names (SLURM
# does not create it), then runs sbatch with the same arguments:
#   bash slurm/submit.sh [sbatch options] slurm/prior.sbatch experiment=coco_gpt2_medium ...
set -euo pipefail
mkdir -p outputs/slurm
exec sbatch "$@"
