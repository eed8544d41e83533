#!/usr/bin/env bash
# The device check of ala_nb: every GPU figure in one go (<= 8 minutes on one H100), one JSON out.
#   bash bench/device_prepare.sh               # first, where there is a network: fills .device/ (carry it)
#   OUT=<folder> bash bench/device_check.sh    # on the GPU node: $OUT/device_check.json + device_check_logs.tar.gz
#   OUT=<folder> bash bench/device_check.sh --cpu   # the dry run: CPU-capable parts at tiny sizes, anywhere
# Options: --budget SECONDS, --skip STAGES, --notebooks LIST. Python: $PYTHON, else python3 on PATH.
# What each stage does: bench/device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/device_check.py "$@"
