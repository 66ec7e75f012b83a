#!/bin/bash
# Start the array, then the merge once every task has ended (afterany: a task that left jobs
# for a rerun still lets the merge show what is done; run this script again to finish them).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p logs
array=$(sbatch --parsable examples/slurm/krea-batch.sbatch)
sbatch --dependency="afterany:${array}" examples/slurm/merge.sbatch
echo "array job ${array}; merge queued after it"
