"""`ala_sweep` from the shell (issue 17): refused inputs answer in one line before anything is trained, the sweep runs its own
`ala_train` (not the first on PATH), folders of the same setting are recognised by value, and only a run with final.json counts."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

from clitools import run
import ala_nb.study as study

TINY = ('--methods', 'ce', '--seeds', '0', '--preset', 'fmnist_lt_tiny', '--nice', '0')

def sweep(*args, **kw): return run('ala_sweep', *args, **kw)

@pytest.mark.parametrize('args, says', [
    (('--jobs', '0'), '--jobs must be an integer >= 1, got 0'),
    (('--jobs', '-1'), '--jobs must be an integer >= 1, got -1'),
    (('--extra', '--bogus 1'), 'unrecognized arguments: --bogus 1'),
    (('--extra', '--epochs many'), "argument --epochs: invalid int value: 'many'"),
    (('--extra', '--loss focal --lr -1'), 'lr'),
    (('--seeds', '0,x'), '--seeds must be integers'),
])
def test_bad_input_is_one_line_and_trains_nothing(tmp_path, args, says):
    p = sweep(*TINY, '--out', tmp_path/'s', *args, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith('ala_sweep: error: ') and says in lines[0], p.stderr
    assert not (tmp_path/'s').exists()

def test_own_train_and_same_value_folders(tmp_path):
    "An `ala_train` first on PATH is not run; a finished folder made with the preset's imb_factor 32 is this sweep's with `--imb_factor 32`."
    fake = tmp_path/'bin'; fake.mkdir()
    (fake/'ala_train').write_text(f'#!/bin/sh\ntouch {tmp_path}/fake_ran\nexit 0\n'); (fake/'ala_train').chmod(0o755)
    env = dict(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    p = sweep(*TINY, '--out', tmp_path/'s', env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (tmp_path/'fake_ran').exists() and (tmp_path/'s'/'ce-seed0'/'final.json').exists()
    assert json.loads((tmp_path/'s'/'ce-seed0'/'config.json').read_text())['imb_factor'] == 32
    mtime = (tmp_path/'s'/'ce-seed0'/'final.json').stat().st_mtime_ns
    p = sweep(*TINY, '--out', tmp_path/'s', '--extra', '--imb_factor 32', env=env)
    assert p.returncode == 0 and p.stderr == '', p.stderr
    assert '| CE | 1 |' in p.stdout and (tmp_path/'s'/'ce-seed0'/'final.json').stat().st_mtime_ns == mtime   # kept, not retrained
    p = sweep(*TINY, '--out', tmp_path/'s', '--extra', '--imb_factor 16', env=env)
    assert p.returncode == 2 and 'imb_factor: folder 32, sweep 16.0' in p.stderr, p.stderr

def test_sweep_mismatch_compares_values(tmp_path):
    from ala_nb.runs import read_json, CONFIG
    from ala_nb.testing import toy_run
    toy_run(tmp_path/'r', [.5] * 4, preset='fmnist_lt_tiny')
    c = read_json(tmp_path/'r'/CONFIG)
    assert study.sweep_mismatch(tmp_path/'r', dict(c, imb_factor=None)) == []
    (tmp_path/'r'/CONFIG).write_text(json.dumps(dict(c, imb_factor=32, lr=0.05)))
    assert study.sweep_mismatch(tmp_path/'r', dict(c, imb_factor=32.0, lr=0.05)) == []
    assert study.sweep_mismatch(tmp_path/'r', dict(c, imb_factor=32.5, lr=0.05)) == ['imb_factor: folder 32, sweep 32.5']

def test_a_run_without_final_json_is_not_done(tmp_path, monkeypatch, capsys):
    "A run that exits 0 without final.json (what a preempted ala_train does) is reported as not finished, not as done."
    real = subprocess.Popen
    def preempted(cmd, **kw):                        # the run exits 0 and writes nothing; --print_config runs for real
        return real(cmd if '--print_config' in cmd else [sys.executable, '-c', 'pass'], **kw)
    monkeypatch.setattr(study.subprocess, 'Popen', preempted)
    rcs = study.run_sweep(['ce'], [0], tmp_path/'s', 'fmnist_lt_tiny')
    assert rcs == {tmp_path/'s'/'ce-seed0': None}
    assert 'NOT FINISHED (exit 0, no final.json' in capsys.readouterr().out

def test_train_command_is_this_install():
    cmd, env = study.train_command(['ala_train', '--seed', '3'])
    assert cmd[0] == sys.executable and cmd[-4:] == ['-m', 'ala_nb.train_cli', '--seed', '3']
    assert env['PYTHONPATH'].split(os.pathsep)[0] == str(Path(study.__file__).resolve().parents[1])
    p = subprocess.run([*cmd, '--print_config'], capture_output=True, text=True, env=env, cwd='/')
    assert p.returncode == 0 and json.loads(p.stdout)['seed'] == 3, p.stderr      # flags parsed under -m, not defaults

def test_dry_run_plans_every_method_second_stages_last(tmp_path):
    "`--methods all --dry_run`: every available full method + ALA without DRW + the second stages, 5 seeds, nothing made; finished runs are kept."
    from ala_nb.methods import method_names
    from ala_nb.testing import toy_run
    toy_run(tmp_path/'s'/'ce-seed0', [.5] * 4, loss='ce')
    (tmp_path/'s'/'lade-seed1').mkdir()
    p = sweep('--methods', 'all', '--out', tmp_path/'s', '--dry_run')
    assert p.returncode == 0 and p.stderr == '', p.stderr
    lines = p.stdout.strip().splitlines()
    n = 5 * (len(method_names()) + 1 + len(method_names('second_stage')))
    assert n == 90 and len(lines) == n + 1                                   # 14 full methods + ALA without DRW + 3 second stages
    assert lines[-1] == f"{n} commands: {n - 2} to run, 1 finished (kept), 1 skipped (folder exists without final.json); nothing checked or trained"
    assert lines[0].startswith('finished: ala_train --preset fmnist_lt --loss ce --seed 0 --out ')
    stages = [i for i, l in enumerate(lines[:-1]) if '--first_stage' in l]
    assert len(stages) == 15 and stages == list(range(n - 15, n))           # second stages last
    assert f"to run after {tmp_path/'s'/'ce-seed1'}: " in lines[n - 14] and '--loss crt' in lines[n - 14]
    assert sorted(q.name for q in (tmp_path/'s').iterdir()) == ['ce-seed0', 'lade-seed1']   # nothing made
