#!/bin/bash
# Start the array, then the merge once every task has ended (afterany: the merge says what is
# missing or unfinished, and fails if anything is). Run it with bash, from anywhere:
#
#   bash examples/slurm/submit.sh                  # the whole array (0-7, as in the script)
#   bash examples/slurm/submit.sh --array=3,5      # tasks 3 and 5 again, then the merge again
#
# Arguments go to the array's sbatch. Variables as in krea-batch.sbatch (see env.sh); the
# logs are OUT/logs/krea-batch-<array>_<task>.log, appended to when a task is requeued.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export REPO
# shellcheck source=examples/slurm/env.sh
source "$REPO/examples/slurm/env.sh"
mkdir -p "$OUT/logs"  # Slurm does not make it: a missing one fails every task, with no log

array=$(sbatch --parsable --chdir="$REPO" --output="$OUT/logs/krea-batch-%A_%a.log" "$@" \
  "$REPO/examples/slurm/krea-batch.sbatch")
array=${array%%;*}
merge=$(sbatch --parsable --chdir="$REPO" --dependency="afterany:$array" \
  --output="$OUT/logs/krea-batch-merge-%j.log" "$REPO/examples/slurm/merge.sbatch")
echo "array job ${array}, merge job ${merge%%;*} after it; logs in $OUT/logs"
