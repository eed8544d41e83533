#!/usr/bin/env bash
# Run where there is a network, before the device check travels to an air-gapped GPU node.
# Fills the git-ignored folder .device/ with what a stock PyTorch image lacks for bench/device_check.sh:
#   .device/site/           fastcore and fastprogress (pure Python), installed with pip --target: PYTHONPATH
#   .device/fashion-mnist/  the four Fashion-MNIST .gz files: ALA_DATA
# nbdev is not carried: its needs (IPython, jedi, ...) would not fit in 40 MiB beside Fashion-MNIST, and the
# notebooks' GPU cells need none of it (bench/run_notebook.py runs them as nbdev_test would).
# Then prints the size of working tree + .device/ (at most 40 MiB) and what to carry.
#   PYTHON=python3 bash bench/device_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT=$((40 * 1024 * 1024))
rm -rf .device.new && mkdir -p .device.new/site .device.new/fashion-mnist
# the versions ala_nb is tested with (settings.ini: fastprogress>=1.0.3,<1.1 fastcore>=1.5.29,<2); pure-Python wheels
"$PY" -m pip install --quiet --no-deps --no-compile --only-binary=:all: --target .device.new/site \
    'fastcore==1.14.5' 'fastprogress==1.0.5'
rm -rf .device.new/site/bin
# Fashion-MNIST: from where ala_nb finds it here (ALA_DATA, Debian's dataset-fashion-mnist, the cache), else downloaded
"$PY" - <<'PY'
import shutil, gzip, sys
from pathlib import Path
sys.path.insert(0, '.'); sys.path.insert(1, '.device.new/site')
from ala_nb.data import find_fashion_mnist
dst = Path('.device.new/fashion-mnist')
try: found = find_fashion_mnist()
except FileNotFoundError:
    print('device_prepare: Fashion-MNIST not found here; downloading it with torchvision', file=sys.stderr)
    found = find_fashion_mnist(download=True)
for k, p in found.items():
    p = Path(p)
    if p.suffix == '.gz': shutil.copyfile(p, dst/p.name)
    else:
        with open(p, 'rb') as f, gzip.open(dst/(p.name + '.gz'), 'wb', compresslevel=9) as g: shutil.copyfileobj(f, g)
    print(f"device_prepare: {k}: {p}")
PY
rm -rf .device && mv .device.new .device
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
dev=$(du -sb .device | cut -f1)
total=$((tree + ${untracked:-0} + dev))
printf 'device_prepare: working tree %.1f MiB (+ %.1f MiB untracked) + .device/ %.1f MiB = %.1f MiB (limit 40 MiB)\n' \
    "$(echo "$tree/1048576" | bc -l)" "$(echo "${untracked:-0}/1048576" | bc -l)" "$(echo "$dev/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then echo "device_prepare: error: over 40 MiB" >&2; exit 1; fi
echo "device_prepare: carry: .device"
echo "device_prepare: on the node: OUT=<folder> bash bench/device_check.sh     (dry run here: ... --cpu)"
