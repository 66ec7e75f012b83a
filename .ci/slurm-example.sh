#!/usr/bin/env bash
# examples/slurm on a real single-node Slurm, against the emulator: `make slurm-test` (as root:
# it starts Slurm's daemons; CI runs it after `make test`). Installs Debian's Slurm and munge
# when missing; munged, slurmctld and slurmd run with a config and key of their own in a
# scratch folder (the system's are not touched) and are stopped at the end, whatever happens.
#
# What it checks, on a 64-job manifest split in 8 shards:
#  1. a round with task 3 cancelled before it started and task 5 requeued while it ran: the
#     merge queued after it names shard 4 of 8 (task 3) as missing and fails (exit 3);
#  2. task 3 run again alone (`sbatch --array=3`) with its folder never made: refused (exit 2),
#     nothing sent; with KREA_BATCH_SHARDS=8 it runs;
#  3. task 6 run again alone (`sbatch --array=6`): its folder gives the count; nothing is sent;
#  4. the merge then: every job exactly once, all completed; the emulator's submits equal the
#     jobs, and no job was submitted or paid twice.
#
# Variables: KREA_BATCH (default: .venv/bin/krea-batch), PYTHON (default: .venv/bin/python),
# KEEP=1 keeps the scratch folder (its logs) at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export REPO
export KREA_BATCH=${KREA_BATCH:-$REPO/.venv/bin/krea-batch}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
JOBS=64
CANCELLED=3
REQUEUED=5
RERUN=6

say() { echo "slurm-example: $*"; }
fail() {
  say "FAILED: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "run it as root: it starts munged, slurmctld and slurmd"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  say "installing Debian's slurmctld, slurmd, slurm-client and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

WORK=$(mktemp -d /tmp/krea-slurm.XXXXXX)
chmod 755 "$WORK" # munged's socket is here: its folder must be open to all
mkdir -m 700 "$WORK/munge"
mkdir "$WORK/state" "$WORK/spool" "$WORK/log"
pids=()
submitted=()
cleanup() {
  if [ "${#submitted[@]}" -gt 0 ]; then # jobs left by a failure: their processes end first
    scancel "${submitted[@]}" 2>/dev/null || true
    for _ in $(seq 150); do
      squeue -h -o %i 2>/dev/null | grep -q . || break
      sleep 0.2
    done
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- munge and Slurm --------------------------------------------------------------------------
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
munged --foreground --key-file="$WORK/munge/munge.key" --socket="$WORK/munge.sock" \
  --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/log/munged.log" \
  --seed-file="$WORK/munge/munged.seed" >"$WORK/log/munged.out" 2>&1 &
pids+=($!)

node=$(hostname -s)
hardware=$(slurmd -C | head -1 | grep -o 'CPUs=.*RealMemory=[0-9]*')
export SLURM_CONF=$WORK/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=krea-ci
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge.sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i >"$WORK/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D >"$WORK/log/slurmd.out" 2>&1 &
pids+=($!)

until_true() { # SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what"
    sleep 0.2
  done
}
node_idle() { sinfo -h -n "$node" -o %T 2>/dev/null | grep -q '^idle'; }
until_true 30 "the node did not come up (logs: $WORK/log)" node_idle
say "Slurm up: node $node ($hardware)"

# ---- the emulator and the manifest ------------------------------------------------------------
emulator_port=$(free_port)
read -r -a krea_batch <<<"$KREA_BATCH"
"${krea_batch[@]}" serve --host 127.0.0.1 --port "$emulator_port" --latency fixed:0.3 \
  --concurrency-limit 8 >"$WORK/log/emulator.log" 2>&1 &
pids+=($!)
stats() { "$PYTHON" - "$emulator_port" "$@" <<'PY'; }
import json, sys, urllib.request
port, fields = sys.argv[1], sys.argv[2:]
data = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=5))
print(" ".join(str(data.get(name, 0)) for name in fields))
PY
until_true 20 "the emulator did not answer" stats submits >/dev/null 2>&1
"$PYTHON" - "$WORK/jobs.yaml" "$JOBS" <<'PY'
import sys
path, jobs = sys.argv[1], int(sys.argv[2])
seeds = list(range(jobs))
sys.stdout = open(path, "w")
print(f"""version: 1
jobs:
  - prompt: a lighthouse on a cliff
    model: seedream-4
    sizes: [128x128]
    seeds: {seeds}
run: {{concurrency: 8, rate_limit: 100, poll_interval: 0.2}}""")
PY

export MANIFEST=$WORK/jobs.yaml OUT=$WORK/out KEYS=$WORK/no-keys KREA_API_TOKEN=ci
export KREA_API_BASE=http://127.0.0.1:$emulator_port
unset KREA_BATCH_SHARDS

state_of() { scontrol -o show job "$1" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort -u | xargs; }
exit_of() { scontrol -o show job "$1" | grep -o ' ExitCode=[0-9]*' | cut -d= -f2 | sort -n | tail -1; }
ended() { ! state_of "$1" | grep -qE 'PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUE|SUSPENDED'; }
wait_job() { until_true 120 "job $1 did not end in 2 minutes" ended "$1"; }
rerun() { # TASK: `sbatch --array=TASK` of the example, as a user reruns one task; sets code, log
  local id
  id=$(sbatch --parsable --array="$1" --output="$OUT/logs/rerun-%A_%a.log" \
    examples/slurm/krea-batch.sbatch)
  id=${id%%;*}
  submitted+=("$id")
  wait_job "$id"
  code=$(exit_of "$id")
  log=$OUT/logs/rerun-${id}_$1.log
}

# ---- 1. a round: one task cancelled before it starts, one requeued while it runs --------------
started=$SECONDS
ids=$(bash examples/slurm/submit.sh --hold)
say "$ids"
array=$(sed -n 's/^array job \([0-9]*\),.*/\1/p' <<<"$ids")
merge=$(sed -n 's/.*merge job \([0-9]*\) after.*/\1/p' <<<"$ids")
[ -n "$array" ] && [ -n "$merge" ] || fail "submit.sh did not say its jobs: $ids"
submitted+=("$array" "$merge")
scancel "${array}_$CANCELLED"
scontrol release "$array"
journal=$OUT/shard-$REQUEUED/.krea-batch/journal.jsonl
sending_or_done() { # task REQUEUED has sent jobs (or, on a slow poll, ended)
  local state
  state=$(state_of "${array}_$REQUEUED")
  { [ "$state" = RUNNING ] && [ -s "$journal" ]; } || [ "$state" = COMPLETED ]
}
until_true 60 "task $REQUEUED never ran" sending_or_done
say "task $REQUEUED requeued while $(state_of "${array}_$REQUEUED")"
scontrol requeue "${array}_$REQUEUED"
# Slurm makes a requeued job wait 2 minutes before it may start again: not here.
pending() { [ "$(state_of "${array}_$REQUEUED")" = PENDING ]; }
until_true 60 "task $REQUEUED was not requeued" pending
scontrol update JobId="${array}_$REQUEUED" StartTime=now
wait_job "$array"
wait_job "$merge"
say "round over in $((SECONDS - started)) s: array $(state_of "$array"), merge $(state_of "$merge")"
merge_log=$OUT/logs/krea-batch-merge-$merge.log
[ "$(exit_of "$merge")" = 3 ] || fail "the merge of an incomplete round exited $(exit_of "$merge"), not 3"
grep -q "shard $((CANCELLED + 1)) of 8 (task $CANCELLED) is missing" "$merge_log" ||
  fail "the merge did not name the missing shard: $(cat "$merge_log")"
[ ! -e "$OUT/merged/results.jsonl" ] || fail "the incomplete merge wrote a folder"
starts=$(grep -c "task $REQUEUED, start" "$OUT/logs/krea-batch-${array}_$REQUEUED.log")
[ "$starts" -ge 2 ] || fail "the requeued task's log holds $starts start(s): overwritten?"
[ "$(stats duplicate_submits paid_twice)" = "0 0" ] || fail "a job was submitted twice"
after_round=$(stats submits)
say "merge failed as it should: $(grep -o 'shard [0-9]* of 8 (task [0-9]*) is missing' "$merge_log")"

# ---- 2. the cancelled task alone: its folder never made, so the count must be given -------------
rerun "$CANCELLED"
[ "$code" = 2 ] || fail "task $CANCELLED alone, with no folder and no count, exited $code, not 2"
grep -q "KREA_BATCH_SHARDS=N" "$log" || fail "no advice: $(cat "$log")"
[ ! -e "$OUT/shard-$CANCELLED" ] || fail "a refused run made a folder"
[ "$(stats submits)" = "$after_round" ] || fail "a refused run sent jobs"
KREA_BATCH_SHARDS=8 rerun "$CANCELLED"
[ "$code" = 0 ] || fail "task $CANCELLED with KREA_BATCH_SHARDS=8 exited $code: $(cat "$log")"
say "task $CANCELLED alone: refused without a count, done with KREA_BATCH_SHARDS=8"

# ---- 3. a finished task alone, the usual Slurm way: the folder says the count ----------------
before=$(stats submits)
rerun "$RERUN"
[ "$code" = 0 ] || fail "task $RERUN alone exited $code: $(cat "$log")"
[ "$(stats submits)" = "$before" ] || fail "task $RERUN alone sent jobs again"
# The sbatch script logs JSON: its closing line is an object with the counts as fields.
grep -q '"completed": 0, "failed": 0, "ambiguous": 0, "already_done": [1-9]' "$log" ||
  fail "task $RERUN alone did not resume its shard: $(cat "$log")"
say "task $RERUN alone: shard $((RERUN + 1)) of 8 from its folder, nothing sent"

# ---- 4. the merge of the whole round ---------------------------------------------------------
id=$(sbatch --parsable --output="$OUT/logs/merge-%j.log" examples/slurm/merge.sbatch)
submitted+=("${id%%;*}")
wait_job "${id%%;*}"
[ "$(exit_of "${id%%;*}")" = 0 ] || fail "the merge exited $(exit_of "${id%%;*}")"
"$PYTHON" - "$OUT/merged/results.jsonl" "$JOBS" <<'PY' || fail "the merged folder is wrong"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
keys = {r["key"] for r in records}
statuses = {r["status"] for r in records}
ok = len(records) == len(keys) == int(sys.argv[2]) and statuses == {"completed"}
print(f"slurm-example: merged {len(records)} records, {len(keys)} jobs, {sorted(statuses)}")
sys.exit(0 if ok else 1)
PY
read -r submits duplicates paid_twice <<<"$(stats submits duplicate_submits paid_twice)"
[ "$submits" = "$JOBS" ] || fail "the emulator took $submits submits for $JOBS jobs"
[ "$duplicates" = 0 ] && [ "$paid_twice" = 0 ] || fail "jobs submitted or paid twice"
say "passed: $JOBS jobs, $submits submits, none twice, in $SECONDS s"
