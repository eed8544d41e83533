"`ala_train` from the shell: a tiny end-to-end run and its run folder, piped output, bad input, no overwriting."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch
from ala_nb.data import shot_groups

from clitools import ROOT, run

def run_cli(*args, timeout=300, cwd=ROOT): return run('ala_train', *args, timeout=timeout, cwd=cwd)

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')/'tiny'
    p = run_cli('--preset', 'fmnist_lt_tiny', '--device', 'cpu', '--out', out)
    assert p.returncode == 0, p.stderr
    return out, p

def test_piped_output_is_plain_lines(tiny_run):
    out, p = tiny_run
    assert '\r' not in p.stdout and '\x1b' not in p.stdout, 'progress-bar redraws in piped output'
    epochs = [l for l in p.stdout.splitlines() if l.startswith('epoch ')]
    assert [l.split()[1] for l in epochs] == ['1/3', '2/3', '3/3']
    lines = p.stdout.splitlines()
    assert lines[-3].split() == ['All', 'Many', 'Medium', 'Few'] and lines[-1].startswith('top-1 %')
    assert p.stderr.strip() == ''

def test_run_folder_contents(tiny_run):
    out, _ = tiny_run
    for f in ('config.json', 'metrics.jsonl', 'final.json', 'checkpoint.pt', 'test_outputs.npz', 'adjust_trace.jsonl'):
        assert (out/f).is_file(), f
    assert not [f for f in os.listdir(out) if f.endswith('.tmp')]
    cfg = json.loads((out/'config.json').read_text())
    assert (cfg['preset'], cfg['loss'], cfg['epochs'], cfg['arch']) == ('fmnist_lt_tiny', 'ala', 3, 'resnet8')
    fin = json.loads((out/'final.json').read_text())
    for k in ('top1', 'per_class', 'counts', 'groups', 'classes', 'loss', 'drw', 'preset', 'seed', 'epochs', 'wall_s',
              'train_images_per_s'):
        assert k in fin, k
    C = len(fin['counts'])
    assert C == 10 and len(fin['per_class']) == C and len(fin['classes']) == C
    assert fin['groups'] == shot_groups(fin['counts']) and all(fin['groups'][g] for g in ('many', 'medium', 'few'))
    assert (fin['loss'], fin['drw'], fin['seed'], fin['epochs']) == ('ala', True, 0, 3)
    assert list(fin['top1']) == ['all', 'many', 'medium', 'few']
    assert all(0 <= v <= 1 for v in fin['top1'].values()) and all(0 <= v <= 1 for v in fin['per_class'])
    assert fin['wall_s'] > 0 and fin['train_images_per_s'] > 0
    m = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in m] == [1, 2, 3]
    for r in m:
        assert {'epoch', 'train_loss', 'lr', 'top1', 'per_class'} <= set(r) and len(r['per_class']) == C
        assert np.isfinite(r['train_loss']) and r['lr'] > 0
        assert all(v is None or 0 <= v <= 1 for v in r['top1'].values())
    assert {r['split'] for r in m} == {'val'} and len(m[-1]['per_class']) == len(fin['per_class'])   # per epoch: validation; the test set once, in final.json
    z = np.load(out/'test_outputs.npz')
    assert sorted(z.files) == ['p_true', 'pred', 'target']
    assert (z['target'].dtype, z['pred'].dtype, z['p_true'].dtype) == (np.int64, np.int64, np.float32)
    n = len(z['target'])
    assert n == 200 and z['pred'].shape == z['p_true'].shape == (n,)
    assert ((z['p_true'] >= 0) & (z['p_true'] <= 1)).all() and ((z['pred'] >= 0) & (z['pred'] < C)).all()
    acc = np.array([(z['pred'][z['target'] == c] == c).mean() for c in range(C)])
    np.testing.assert_allclose(acc, fin['per_class'], atol=1e-6)
    tr = [json.loads(l) for l in (out/'adjust_trace.jsonl').read_text().splitlines()]
    assert [t['epoch'] for t in tr] == [1, 2, 3]
    for t in tr:
        for g in ('many', 'medium', 'few'): assert set(t[g]) == {'df', 'qf', 'adjust'}
        assert t['few']['qf'] > t['many']['qf']
        assert all(0 <= t[g]['df'] <= 1 for g in ('many', 'medium', 'few'))
    ck = torch.load(out/'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['step']) == (3, 0)

def test_linear_head_loss_has_no_trace(tmp_path):
    p = run_cli('--preset', 'fmnist_lt_tiny', '--loss', 'ce', '--epochs', '1', '--out', tmp_path/'ce')
    assert p.returncode == 0, p.stderr
    assert not (tmp_path/'ce'/'adjust_trace.jsonl').exists()
    fin = json.loads((tmp_path/'ce'/'final.json').read_text())
    assert (fin['loss'], fin['drw'], fin['epochs']) == ('ce', False, 1)

def test_help_lists_every_flag():
    p = run_cli('--help')
    assert p.returncode == 0
    for flag in ('--preset', '--loss', '--epochs', '--batch_size', '--lr', '--seed', '--drw', '--drw_epoch', '--arch',
                 '--data_root', '--split_dir', '--out', '--device', '--amp', '--compile', '--resume', '--overwrite'):
        assert flag in p.stdout, flag

def test_help_has_a_flag_per_field_and_the_usage_spells_hyphens():
    "Every TrainConfig field but loss_kw and lr_steps (a --config's) is a flag, its help the field's docment."
    from dataclasses import fields
    from ala_nb.config import TrainConfig
    from fastcore.docments import docments
    p = run_cli('--help')
    h, docs = ' '.join(p.stdout.split()), docments(TrainConfig)
    usage, opts = h.split(' options: ', 1)
    for f in fields(TrainConfig):
        flag = {'root': 'data_root'}.get(f.name, f.name)
        if f.name in ('loss_kw', 'lr_steps'): assert f'--{flag} ' not in h; continue
        assert f'--{flag}' in opts and ''.join(docs[f.name].replace('`', '').split()) in ''.join(opts.split()), f.name
        assert f"--{flag.replace('_', '-')}" in usage and (f'--{flag} ' not in usage or '_' not in flag), f.name
    for flag in ('--workers', '--pretrained', '--version', '--batch-size N', '--print-config'): assert flag in h, flag

def test_version():
    from ala_nb import __version__
    p = run_cli('--version')
    assert (p.returncode, p.stdout) == (0, f'ala_nb {__version__}\n')

BAD = [  # (arguments, what the one error line must name)
    (['--loss', 'alx'], "unknown loss 'alx'"),
    (['--preset', 'cifar1000_lt'], "unknown preset 'cifar1000_lt'"),
    (['--arch', 'resnet9'], "unknown arch 'resnet9'"),
    (['--epochs', '-3'], 'epochs must be an integer >= 1, got -3'),
    (['--lr', '0'], 'lr must be a finite number > 0, got 0.0'),
    (['--lr', '-0.1'], 'got -0.1'),
    (['--batch_size', '0'], 'batch_size must be an integer >= 1, got 0'),
    (['--drw_epoch', '40'], 'drw_epoch must be in [0, epochs=36], got 40'),
    (['--epochs', '3', '--drw_epoch', '5'], 'drw_epoch must be in [0, epochs=3], got 5'),
    (['--amp', 'fp8'], "unknown amp 'fp8'"),
    (['--device', 'tpu'], "unknown device 'tpu'"),
    (['--cfg', '{"lr": '], '--cfg is not valid JSON'),
    (['--cfg', '{"n_maxx": 3}'], "unknown TrainConfig field(s) 'n_maxx'"),
    (['--preset', 'cifar10_lt', '--data_root', '/nonexistent/cifar'], '/nonexistent/cifar'),
    (['--preset', 'imagenet_lt_r50'], 'imagenet_lt'),
    (['--cfg', '[1, 2]'], '--cfg: expected a JSON object of TrainConfig fields, got a list: [1, 2]'),
    (['--config', '["a"]'], '--config: expected a JSON object of TrainConfig fields, got a list'),
    (['--cfg', '{"batchsize": 16}'], "unknown TrainConfig field(s) 'batchsize' (did you mean 'batch_size'?)"),
    (['--cfg', '{"lr": "abc"}'], "--cfg: lr 'abc': expected a number"),
    (['--config', '{"out": "elsewhere"}'], '--config: give out as flags (--out)'),
    (['--cfg', ' '], '--cfg is empty'),
    (['--workers', '-1'], 'num_workers must be an integer >= 0, got -1'),
    (['--dataset', 'mnist'], "unknown dataset 'mnist'"),
    (['--schedule', 'linear'], "unknown schedule 'linear'"),
    (['--workers', 'many'], "argument --num_workers/--workers: invalid int value: 'many'"),
    (['--preset', 'fmnist_lt', '--cfg', '{"preset": "cifar10_lt"}'], 'is a cifar10_lt config'),
    (['--cfg', '{"normed": false}'], "normed false, but loss 'ala' expects the cosines of a cosine head"),
    (['--loss', 'ldam', '--cfg', '{"normed": false}'], "loss 'ldam' expects the cosines"),
    (['--cfg', '{"loss_kw": {"s": "abc"}}'], "loss_kw.s 'abc': ALALoss expects a number"),
    (['--cfg', '{"loss_kw": {"difficulty": 3}}'], 'loss_kw.difficulty 3: ALALoss expects true or false'),
    (['--seed', '100000000000000000000'], 'seed must be an integer in [0, 4294967295], got 100000000000000000000'),
    (['--cfg', '{"data_seed": 4294967296}'], 'data_seed must be an integer in [0, 4294967295]'),
]
BAD += [  # issue 17: loss keyword arguments the loss does not take, or out of its range
    (['--loss', 'ala', '--cfg', '{"loss_kw": {"max_m": 0.3}}'], "make_loss('ala') got unexpected keyword argument(s) 'max_m'"),
    (['--loss', 'ldam', '--cfg', '{"loss_kw": {"max_m": -0.5}}'], 'LDAMLoss: max_m = -0.5: expected a finite number > 0'),
    (['--loss', 'la', '--cfg', '{"loss_kw": {"tau": -1}}'], 'LogitAdjustedLoss: tau = -1: expected a finite number >= 0'),
    (['--loss', 'focal', '--cfg', '{"loss_kw": {"gamma": "2"}}'], "loss_kw.gamma '2': FocalLoss expects a number"),
]

def _driver(tmp_path, cases) -> list:
    "Run `ala_train` on each argument list in one interpreter (saves a torch import per case); (exit code, stderr) each."
    script = tmp_path/'driver.py'
    script.write_text(
        'import sys, io, json, contextlib\n'
        'from ala_nb.train_cli import ala_train\n'
        'res = []\n'
        'for argv in json.loads(sys.argv[1]):\n'
        '    sys.argv = ["ala_train"] + argv\n'
        '    err = io.StringIO()\n'
        '    with contextlib.redirect_stderr(err):\n'
        '        try: ala_train(); code = 0\n'
        '        except SystemExit as e: code = e.code\n'
        '    res.append((code, err.getvalue()))\n'
        'print(json.dumps(res))\n')
    p = subprocess.run([sys.executable, str(script), json.dumps(cases)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])

def test_bad_input_exit_2_one_line(tmp_path):
    cases = [a + ['--out', str(tmp_path/f'run{i}')] for i, (a, _) in enumerate(BAD)]
    for (args, want), (code, err) in zip(BAD, _driver(tmp_path, cases)):
        lines = err.strip().splitlines()
        assert code == 2, (args, code, err)
        assert len(lines) == 1 and lines[0].startswith('ala_train: error: ') and want in lines[0], (args, err)
        assert 'Traceback' not in err
    assert not any((tmp_path/f'run{i}').exists() for i in range(len(BAD))), 'a failed run created its folder'

def test_bad_input_real_process(tmp_path):
    "The same through a real process exit: code 2 and one line on stderr."
    p = run_cli('--epochs', '-3', '--out', tmp_path/'r')
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ['ala_train: error: epochs must be an integer >= 1, got -3']
    assert p.stdout == '' and not (tmp_path/'r').exists()

def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path/'run'; out.mkdir()
    files = {'config.json': '{"precious": true}\n', 'metrics.jsonl': '{"epoch": 1}\n', 'final.json': '{"top1": 1}\n',
             'notes.txt': 'mine'}
    for f, t in files.items(): (out/f).write_text(t)
    cases = [['--preset', 'fmnist_lt_tiny', '--out', str(out)],                                    # neither flag
             ['--preset', 'fmnist_lt_tiny', '--out', str(out), '--overwrite', '--lr', '0'],        # bad number
             ['--preset', 'cifar10_lt', '--data_root', '/nonexistent', '--out', str(out), '--overwrite'],  # no data
             ['--preset', 'fmnist_lt_tiny', '--out', str(out), '--resume', '--overwrite'],
             ['--preset', 'fmnist_lt_tiny', '--out', str(out), '--resume']]                        # not our config
    res = _driver(tmp_path, cases)
    assert [c for c, _ in res] == [2, 2, 2, 2, 2]
    assert 'already holds a run' in res[0][1] and '--resume' in res[0][1] and '--overwrite' in res[0][1]
    assert 'resume and overwrite exclude each other' in res[3][1]
    assert "config.json: unknown TrainConfig field(s) 'precious'" in res[4][1]
    assert {f: (out/f).read_text() for f in files} == files and sorted(os.listdir(out)) == sorted(files)

def test_non_finite_loss_exit_3(tmp_path):
    p = run_cli('--preset', 'fmnist_lt_tiny', '--loss', 'ce', '--lr', '1e30', '--out', tmp_path/'nan')
    assert p.returncode == 3, (p.returncode, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and 'non-finite training loss in epoch 1' in err[0]
    assert not (tmp_path/'nan'/'checkpoint.pt').exists() and not (tmp_path/'nan'/'final.json').exists()

def test_config_folder_with_epochs_rescales_like_a_preset():
    "issue 17: `--config RUN --epochs N` scales the run's schedule as `--preset P --epochs N` does (it kept it, then failed)."
    import json
    study = ROOT/'nbs'/'study'/'ce-seed0'
    for n in (1, 10):
        a = run('ala_train', '--config', study, '--epochs', n, '--print-config')
        b = run('ala_train', '--preset', 'fmnist_lt', '--loss', 'ce', '--epochs', n, '--print-config')
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        ja, jb = json.loads(a.stdout), json.loads(b.stdout)
        assert {k: ja[k] for k in ('epochs', 'warmup_epochs', 'lr_steps', 'drw_epoch')} == \
               {k: jb[k] for k in ('epochs', 'warmup_epochs', 'lr_steps', 'drw_epoch')}

@pytest.mark.parametrize('given, name', [('LDAM-DRW', 'ldam'), ('df·ldam', 'df_ldam'), ('BBN', 'bbn'), ('Causal Norm', 'causal_norm'), ('bsce', 'bsce')])
def test_loss_by_name_or_paper_label(given, name):
    "issue 18: `--loss` takes a method's name or its paper label, in any case; the run records the name."
    p = run('ala_train', '--loss', given, '--print-config')
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)['loss'] == name
