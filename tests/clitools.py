"Shared by the command-line tests: run this package's console scripts the way a user does."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MPLBACKEND='Agg')
MODULES = dict(ala_train='train_cli', ala_bench='bench_cli', ala_figures='figures', ala_sweep='study', ala_cache='cache_cli',
               ala_eval='eval_cli', ala_table='table')

def script(name:str) -> str:
    "The installed console script `name` of this interpreter, else an equivalent script file in TMPDIR."
    exe = Path(sys.executable).parent/name
    if exe.exists(): return str(exe)
    d = Path(os.environ.get('TMPDIR', '/tmp'))/f'{name}_test_entry'
    d.mkdir(exist_ok=True)
    (d/name).write_text(f'import sys\nfrom ala_nb.{MODULES[name]} import {name}\nsys.exit({name}())\n')
    return str(d/name)

def run(name:str, *args, timeout=300, cwd=ROOT) -> subprocess.CompletedProcess:
    "Run console script `name` with `args` to the end, capturing its output."
    return subprocess.run([sys.executable, script(name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)

def start(name:str, *args, log) -> subprocess.Popen:
    "Start console script `name` in the background, its output going to the open file `log`."
    return subprocess.Popen([sys.executable, script(name), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=ENV)
