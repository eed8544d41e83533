"Shared by the command-line tests: run this package's console scripts the way a user does."
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', MPLBACKEND='Agg')
MODULES = dict(ala_train='train_cli', ala_bench='bench_cli', ala_figures='figures', ala_sweep='study', ala_cache='cache_cli',
               ala_eval='eval_cli', ala_table='table', ala_export='export')

def script(name:str) -> str:
    "The installed console script `name` of this interpreter, else an equivalent script file in TMPDIR."
    exe = Path(sys.executable).parent/name
    if exe.exists(): return str(exe)
    d = Path(os.environ.get('TMPDIR', '/tmp'))/f'{name}_test_entry'
    d.mkdir(exist_ok=True)
    (d/name).write_text(f'import sys\nfrom ala_nb.{MODULES[name]} import {name}\nsys.exit({name}())\n')
    return str(d/name)

def run(name:str, *args, timeout=300, cwd=ROOT, env:dict=None) -> subprocess.CompletedProcess:
    "Run console script `name` with `args` to the end, capturing its output; `env`: variables to set (None: unset) on top of `ENV`."
    e = {k: v for k, v in {**ENV, **(env or {})}.items() if v is not None}
    return subprocess.run([sys.executable, script(name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=e)

def start(name:str, *args, log, env:dict=None) -> subprocess.Popen:
    "Start console script `name` in the background, its output going to the open file `log` (`env`: variables added to `ENV`)."
    return subprocess.Popen([sys.executable, script(name), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=dict(ENV, **(env or {})))

def delay(seconds:float)->dict: # the environment of a run slowed down for a crash test
    return dict(ALA_TEST_STEP_DELAY=str(seconds))

RANK_DUMP = dict(ALA_TEST_RANK_DUMP='1')   # every rank writes rank{r}.json

def _splits_dir():
    "The real split files: ../shared/data/splits beside the repo, else $ALA_SPLITS; None if neither has them."
    for d in (ROOT.parent/'shared/data/splits', os.environ.get('ALA_SPLITS')):
        if d and (Path(d)/'Places_LT_train.txt').is_file(): return Path(d)

SPLITS = _splits_dir()
needs_splits = pytest.mark.skipif(SPLITS is None, reason='real split files not found: expected ../shared/data/splits '
                                  'beside the repo (shared/ copied next to the clone) or $ALA_SPLITS')

def run_closed_stdout(name:str, *args, timeout=300) -> tuple:
    "Run console script `name` with its stdout a pipe whose reader has gone (as `| head -1` leaves it): (exit status, stderr)."
    p = subprocess.Popen([sys.executable, script(name), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT, env=ENV)
    p.stdout.close()
    try: err = p.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired: p.kill(); raise
    return p.returncode, err
