# Sourced by the scripts beside it: the variables they share, with their defaults.
#   REPO            the krea-batch repository (set by the scripts)
#   MANIFEST        the manifest (default: REPO/jobs.example.yaml)
#   OUT             the folder of the shards' folders, OUT/shard-<task>, and of OUT/merged
#                   and OUT/logs (default: REPO/out-slurm)
#   KEYS            API keys, one a line, chmod 600 (default: ~/.config/krea-batch/keys);
#                   without that file, KREA_API_TOKEN
#   KREA_API_BASE   another Krea-compatible server, e.g. the emulator (`krea-batch serve`)
#   KREA_BATCH      the command (default: REPO/.venv/bin/krea-batch, which `make install-run`
#                   makes, else `python3 -m runner` from REPO)
if [ ! -f "$REPO/pyproject.toml" ] || [ ! -d "$REPO/runner" ]; then
  echo "krea-batch: REPO=$REPO is not the krea-batch repository: submit from its root," \
    "or set REPO" >&2
  exit 2
fi
MANIFEST=${MANIFEST:-$REPO/jobs.example.yaml}
OUT=${OUT:-$REPO/out-slurm}
KEYS=${KEYS:-$HOME/.config/krea-batch/keys}
if [ -n "${KREA_BATCH:-}" ]; then
  read -r -a krea_batch <<<"$KREA_BATCH"
elif [ -x "$REPO/.venv/bin/krea-batch" ]; then
  krea_batch=("$REPO/.venv/bin/krea-batch")
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  krea_batch=(python3 -m runner)
fi
