#!/usr/bin/env bash
# Runs `python -m muppet_jax.main` on every worker of a Cloud TPU VM pod slice.
#
# Usage (from your workstation or Cloud Shell, in the repository root):
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#     --config configs/large.py --workdir gs://BUCKET/muppet/large \
#     --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets [more --config.x=y ...]
#
# Every worker runs the same command with MUPPET_AUTO_DISTRIBUTED=1, which makes muppet_jax.main
# call jax.distributed.initialize() with no arguments: JAX finds the coordinator, the process
# count and this worker's index in the TPU VM metadata by itself, so no addresses or process ids
# are passed (the explicit MUPPET_COORDINATOR_ADDRESS/... variables are for SLURM, see
# slurm_gpu.sbatch). Re-running the same command resumes from the latest checkpoint in the
# workdir, which must therefore be on GCS (gs://...): every worker reads and writes it.
#
# Options (before or among the pass-through flags):
#   --dry-run      print the commands instead of running them (same as DRY_RUN=1)
#   --sync         copy this checkout (tracked + untracked, not ignored files) to REPO_DIR on
#                  every worker first (same as SYNC=1)
#   --install      pip-install requirements.txt and jax[tpu] on every worker first (INSTALL=1)
#   --background   start detached (nohup) and return; output goes to LOG_FILE on each worker
#                  (BACKGROUND=1). Without it the command runs attached: closing the terminal
#                  stops the run.
#   --env K=V      export K=V for the run on every worker (repeatable)
#   --config PATH, --workdir DIR (or CONFIG / WORKDIR in the environment): required.
#   Any other argument is passed through to muppet_jax.main unchanged ('--' ends options).
#
# Environment:
#   TPU_NAME, ZONE   the TPU VM (required); PROJECT: gcloud project (default: gcloud's).
#   REPO_DIR         checkout on the workers, relative to the home directory or absolute
#                    (default: muppet_jax).
#   PYTHON           interpreter on the workers (default: python3; TPU VM images have no
#                    `python`).
#   JAX_TPU_PACKAGE  what --install adds for the TPU runtime (default: jax[tpu]).
#   LOG_FILE         --background output file on each worker, relative to REPO_DIR
#                    (default: muppet_jax.log).
#   GCLOUD_FLAGS     extra flags for every gcloud call, split on spaces
#                    (e.g. "--tunnel-through-iap --internal-ip").
#   ALLOW_LOCAL_WORKDIR=1  accept a non-gs:// workdir (only for a shared mount such as NFS).

set -euo pipefail

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

DRY_RUN="${DRY_RUN:-0}"
SYNC="${SYNC:-0}"
INSTALL="${INSTALL:-0}"
BACKGROUND="${BACKGROUND:-0}"
CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
REPO_DIR="${REPO_DIR:-muppet_jax}"
PYTHON="${PYTHON:-python3}"
JAX_TPU_PACKAGE="${JAX_TPU_PACKAGE:-jax[tpu]}"
LOG_FILE="${LOG_FILE:-muppet_jax.log}"
# PYTHONUNBUFFERED: logs reach the terminal / log file as they happen. MUPPET_AUTO_DISTRIBUTED:
# jax.distributed.initialize() with TPU auto-detection (plain TPU VMs set no TPU_* variable that
# would reveal a pod; JAX reads the metadata server).
ENV_VARS=(PYTHONUNBUFFERED=1 MUPPET_AUTO_DISTRIBUTED=1)
EXTRA_ARGS=()

while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --sync) SYNC=1 ;;
    --install) INSTALL=1 ;;
    --background) BACKGROUND=1 ;;
    --env) (($# >= 2)) || die "--env needs KEY=VALUE"; ENV_VARS+=("$2"); shift ;;
    --env=*) ENV_VARS+=("${1#--env=}") ;;
    --config) (($# >= 2)) || die "--config needs a value"; CONFIG="$2"; shift ;;
    --config=*) CONFIG="${1#--config=}" ;;
    --workdir) (($# >= 2)) || die "--workdir needs a value"; WORKDIR="$2"; shift ;;
    --workdir=*) WORKDIR="${1#--workdir=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    *) EXTRA_ARGS+=("$1") ;;  # --config.x=y and any other muppet_jax.main flag.
  esac
  shift
done

[[ -n "$CONFIG" ]] || die "--config is required (e.g. --config configs/large.py)"
[[ -n "$WORKDIR" ]] || die "--workdir is required (e.g. --workdir gs://BUCKET/muppet/run1)"
if [[ "$WORKDIR" != gs://* && "${ALLOW_LOCAL_WORKDIR:-0}" != 1 ]]; then
  die "--workdir must be on GCS (gs://...): every worker writes checkpoints there and resumes" \
    "from it (set ALLOW_LOCAL_WORKDIR=1 for a shared NFS mount)"
fi
if [[ "$DRY_RUN" == 1 ]]; then
  TPU_NAME="${TPU_NAME:-TPU_NAME}"
  ZONE="${ZONE:-ZONE}"
fi
[[ -n "${TPU_NAME:-}" ]] || die "set TPU_NAME to the TPU VM's name"
[[ -n "${ZONE:-}" ]] || die "set ZONE to the TPU VM's zone"
for kv in "${ENV_VARS[@]}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$kv'"
done

GCLOUD_EXTRA=()
if [[ -n "${GCLOUD_FLAGS:-}" ]]; then
  read -r -a GCLOUD_EXTRA <<<"$GCLOUD_FLAGS"
fi
GCLOUD_COMMON=(--zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  GCLOUD_COMMON+=(--project="$PROJECT")
fi
GCLOUD_COMMON+=("${GCLOUD_EXTRA[@]}")

# Joins arguments into one shell-quoted string (for the remote --command and for printing):
# plain words stay as they are, anything else goes in single quotes, so that the printed
# commands stay readable and can be pasted into a shell as they are.
quote() {
  local out="" arg q="'" sq="'\\''"
  for arg in "$@"; do
    if [[ ! "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      arg="'${arg//$q/$sq}'"
    fi
    out+="${out:+ }$arg"
  done
  printf '%s' "$out"
}

# Runs, or in dry-run mode prints, one local command.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    quote "$@"
    echo
  else
    "$@"
  fi
}

# Runs one shell command line on every worker at once.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_COMMON[@]}" --command "$1"
}

# REPO_DIR is quoted except for a leading '~/', which the remote shell must expand.
# shellcheck disable=SC2088  # The tilde is meant literally here: it is expanded remotely.
if [[ "$REPO_DIR" == "~/"* ]]; then
  # shellcheck disable=SC2088
  REMOTE_REPO="~/$(quote "${REPO_DIR#\~/}")"
else
  REMOTE_REPO="$(quote "$REPO_DIR")"
fi

if [[ "$DRY_RUN" == 1 ]]; then
  echo "# tpu_pod.sh dry run: commands for TPU '$TPU_NAME' (zone $ZONE), not executed" >&2
fi

if [[ "$SYNC" == 1 ]]; then
  # Ship the working tree (not only committed files) without .git, virtualenvs or build outputs.
  repo_root="$(git rev-parse --show-toplevel)"
  archive="${TMPDIR:-/tmp}/muppet_jax_src.tgz"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$(quote git -C "$repo_root" ls-files -z -co --exclude-standard) |" \
      "$(quote tar -C "$repo_root" --null -T - -czf "$archive")"
  else
    git -C "$repo_root" ls-files -z -co --exclude-standard \
      | tar -C "$repo_root" --null -T - -czf "$archive"
  fi
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:muppet_jax_src.tgz" "${GCLOUD_COMMON[@]}"
  on_all_workers "mkdir -p $REMOTE_REPO && tar -xzf muppet_jax_src.tgz -C $REMOTE_REPO"
fi

if [[ "$INSTALL" == 1 ]]; then
  # requirements.txt holds lower bounds only; jax[tpu] adds libtpu for this accelerator.
  on_all_workers "cd $REMOTE_REPO && $(quote "$PYTHON" -m pip install -r requirements.txt \
    "$JAX_TPU_PACKAGE")"
fi

main_cmd="$(quote env "${ENV_VARS[@]}" "$PYTHON" -m muppet_jax.main --config "$CONFIG" \
  --workdir "$WORKDIR" "${EXTRA_ARGS[@]}")"
if [[ "$BACKGROUND" == 1 ]]; then
  # Detach fully (all three streams) so that the ssh session can close while the run goes on.
  on_all_workers "cd $REMOTE_REPO && nohup $main_cmd > $(quote "$LOG_FILE") 2>&1 < /dev/null &"
else
  on_all_workers "cd $REMOTE_REPO && $main_cmd"
fi
