#!/usr/bin/env bash
# The device check of ala_nb: every GPU check in one go (<= 8 minutes on one GPU), one JSON out.
#   bash bench/device_check.sh                 # on a GPU machine: writes $OUT/device_check.json (else ./device_check.json)
#   bash bench/device_check.sh --cpu           # its CPU-capable parts at tiny sizes, on any machine (a few minutes)
#   bash bench/device_check.sh --out FILE      # the JSON elsewhere; --budget SECONDS; --skip notebooks,protocol,...
# Fashion-MNIST must be where ala_nb finds it (Debian's dataset-fashion-mnist, or ALA_DATA=folder).
# What each stage does: bench/device_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" bench/device_check.py "$@"
