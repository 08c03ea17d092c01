#!/usr/bin/env bash
# The classic Cloudflow walkthrough in one go: save in MLFLOW_save, then load in MLFLOW_load.
#
#   bash demo/run_demo.sh [--hub] [--tracking-uri DIR] [--experiment NAME]
#
# The options go to SAVE_MLflow.py; LOAD_MLflow.py then loads the latest run of the same store and
# experiment. PYTHON picks the interpreter (default: python from PATH).
set -euo pipefail

demo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
store="$demo/cloudflow_store"
experiment="cloudflow_demo"
save_args=()
while (($#)); do
  case "$1" in
    --tracking-uri) store="$2"; shift 2 ;;
    --experiment) experiment="$2"; shift 2 ;;
    *) save_args+=("$1"); shift ;;
  esac
done
case "$store" in /* | *://*) ;; *) store="$PWD/$store" ;; esac  # both scripts run elsewhere

echo "=== Saving (demo/MLFLOW_save/SAVE_MLflow.py) ==="
(cd "$demo/MLFLOW_save" &&
  "$python" SAVE_MLflow.py --tracking-uri "$store" --experiment "$experiment" ${save_args[@]+"${save_args[@]}"})

echo
echo "=== Loading in another process, from another folder (demo/MLFLOW_load/LOAD_MLflow.py) ==="
(cd "$demo/MLFLOW_load" &&
  "$python" LOAD_MLflow.py --tracking-uri "$store" --experiment "$experiment")
