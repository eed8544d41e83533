"""Every console script's command line, run as a user runs it: `-`/`_` flags, switches, choices and examples in
`--help` (without torch where promised), config files, the data flags, and the logs a piped run writes."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

from clitools import ROOT, ENV, MODULES, run, script
from ala_nb import cli
STUDY = ROOT/'nbs'/'study'
TINY = ('--preset', 'fmnist_lt_tiny', '--device', 'cpu')

def imports(name:str, *args, env=None) -> tuple:
    "Run console script `name` under `python -X importtime`: (process, the set of modules it imported)."
    p = subprocess.run([sys.executable, '-X', 'importtime', script(name), *map(str, args)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env=env or ENV)
    mods = {l.rsplit('|', 1)[1].strip() for l in p.stderr.splitlines() if l.startswith('import time:')}
    p.stderr = '\n'.join(l for l in p.stderr.splitlines() if not l.startswith('import time:'))
    return p, mods

def flat(s:str) -> str: return ' '.join(s.split())   # help text as wrapped for any terminal width

# --- the names offered are the registries' ----------------------------------------------------------------------------

def test_light_names_are_the_registries():
    from ala_nb.methods import METHODS, method_names
    from ala_nb.models import ARCHS, _TIMM
    from ala_nb.data import DATASETS, CIFAR_DATASETS
    from ala_nb.config import _COMPILE, AMP_MODES
    import ala_nb.losses as losses
    assert method_names() == tuple(n for n, m in METHODS.items() if m.trainable)
    assert all(hasattr(losses, m.loss) for m in METHODS.values() if m.loss)
    assert cli.ARCH_NAMES == tuple(ARCHS) and cli.TIMM_PREFIX == _TIMM
    assert cli.DATASET_NAMES == tuple(DATASETS)
    assert cli.SPLIT_DATASET_NAMES == tuple(k for k, v in DATASETS.items() if 'splits' in v)
    assert set(CIFAR_DATASETS) <= set(cli.DOWNLOADABLE)
    assert cli.AMP_MODES == AMP_MODES and (None, *cli.COMPILE_MODES) == _COMPILE

def _choices(help_text:str, flag:str) -> list:
    "The names `--help` lists for `flag`."
    opts = flat(help_text.split('options:', 1)[1])
    m = re.search(re.escape(flag) + r' [A-Z_]+ (?:(?! --[a-z]).)*?one of: (.*?)(?: \(default: [^)]*\))?(?= --[a-z]| Flags can|$)', opts)
    assert m, (flag, help_text)
    return [s.strip() for s in m.group(1).replace(', or a label:', ',').split(',')]

def test_help_lists_the_registries():
    from ala_nb.config import PRESETS
    from ala_nb.study import METHOD_NAMES, METHODS
    from ala_nb.methods import method_names
    h = run('ala_train', '--help').stdout
    assert _choices(h, '--preset') == list(PRESETS)
    assert _choices(h, '--loss') == [*method_names(), *method_names('second_stage'), 'or its paper label in any case (e.g. LDAM-DRW)']
    assert _choices(h, '--arch') == [*cli.ARCH_NAMES, 'timm/<name>']
    assert _choices(h, '--amp') == list(cli.AMP_MODES)
    assert _choices(h, '--compile') == ['none', *cli.COMPILE_MODES]
    assert _choices(h, '--device') == ['auto', 'cpu', 'cuda', 'cuda:N']
    h = run('ala_sweep', '--help').stdout
    from ala_nb.study import SWEEP_NAMES, SWEEP_METHODS
    assert _choices(h, '--methods') == [*SWEEP_NAMES, *SWEEP_METHODS, 'or a registry name such as ldam or la', 'or all (every one of them)']
    assert _choices(h, '--preset') == list(PRESETS)

# --- --help: fast, examples last, no torch where it is not needed -------------------------------------------------------

SCRIPTS = ('ala_train', 'ala_sweep', 'ala_figures', 'ala_table', 'ala_cache', 'ala_bench', 'ala_eval', 'ala_export')  # all: --help without torch

def test_every_console_script_is_tested():
    import configparser
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    declared = dict(s.split('=') for s in c['DEFAULT']['console_scripts'].split())
    assert set(declared) == set(SCRIPTS) == set(MODULES)
    assert declared == {k: f'ala_nb.{m}:{k}' for k, m in MODULES.items()}

@pytest.mark.parametrize('name', SCRIPTS)
def test_help_ends_with_examples(name):
    p, mods = imports(name, '--help')
    assert p.returncode == 0 and p.stderr == '', p.stderr
    lines = p.stdout.rstrip().splitlines()
    i = lines.index('examples:')
    ex = lines[i + 1:]
    assert 2 <= len(ex) <= 3 and all(l.startswith('  ') and name in l for l in ex), ex
    assert 'ala_nb' in mods and 'torch' not in mods, f"{name} --help imported torch"

@pytest.mark.parametrize('name,args,want', [
    ('ala_eval', [], 'the following arguments are required: RUN_DIR'),
    ('ala_eval', ['{tmp}', '--split', 'train'], "argument --split: unknown split 'train'; choose from test, val"),
    ('ala_eval', ['{tmp}', '--batch-size', 'four'], "argument --batch_size: invalid int value: 'four'"),
    ('ala_cache', ['{tmp}', 'x.txt'], 'the following arguments are required: OUT_DIR'),
    ('ala_cache', ['{tmp}', 'x.txt', '{tmp}/c', '--size', 'big'], "argument --size: invalid int value: 'big'"),
    ('ala_bench', ['--parts', 'loss,speed'], "argument --parts: unknown part 'speed'"),
    ('ala_bench', ['--device', 'tpu'], "argument --device: unknown device 'tpu'"),
    ('ala_bench', ['--batch-size', '0', '--out', '{tmp}/b.json'], '--batch_size must be >= 1, got 0'),
    ('ala_bench', ['--out', '{tmp}', '--overwrite'], 'is a folder; --out must name a file'),
])
def test_bad_arguments_answer_without_torch(tmp_path, name, args, want):
    "A command line refused before there is anything to compute: one line, exit 2, torch never imported."
    p, mods = imports(name, *[a.replace('{tmp}', str(tmp_path)) for a in args])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'{name}: error: ') and want in lines[0], p.stderr
    assert 'ala_nb' in mods and 'torch' not in mods, f"{name} {' '.join(args)} imported torch"
    assert os.listdir(tmp_path) == []

def test_train_help_and_bad_names_answer_without_torch():
    from ala_nb.methods import method_names
    p, mods = imports('ala_train', '--loss', 'alx')
    assert p.returncode == 2 and 'torch' not in mods
    assert p.stderr.splitlines() == ["ala_train: error: argument --loss: unknown loss 'alx'; choose from "
                                     + ', '.join([*method_names(), *method_names('second_stage')])
                                     + ", or its paper label in any case (e.g. LDAM-DRW)"]
    p, mods = imports('ala_train', *TINY, '--print-config')
    assert p.returncode == 0 and 'torch' not in mods and json.loads(p.stdout)['preset'] == 'fmnist_lt_tiny'

# --- flags: either spelling, switches, values ---------------------------------------------------------------------------

def config_of(*args) -> dict:
    p = run('ala_train', *args, '--print-config')
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)

def test_hyphens_and_underscores_are_one_flag(tmp_path):
    a = config_of(*TINY, '--batch-size', '16', '--drw-epoch', '1', '--max-test', '50', '--progress-every', '5', '--out', tmp_path)
    b = config_of(*TINY, '--batch_size', '16', '--drw_epoch=1', '--max_test', '50', '--progress_every', '5', '--out', tmp_path)
    assert a == b and (a['batch_size'], a['drw_epoch'], a['max_test'], a['progress_every']) == (16, 1, 50, 5.0)

def test_switches():
    from ala_nb.methods import METHODS    # --print-config shows what the run uses: unset, the method's default
    assert [config_of(*TINY, *f)['drw'] for f in ([], ['--drw'], ['--no-drw'], ['--no_drw'])] == [METHODS['ala'].drw_default, True, False, False]
    assert [config_of(*TINY, '--loss', 'ce', *f)['drw'] for f in ([], ['--drw'])] == [METHODS['ce'].drw_default, True]
    assert [config_of(*TINY, *f)['tensorboard'] for f in ([], ['--tensorboard'], ['--no-tensorboard'])] == [False, True, False]
    assert config_of(*TINY, '--amp', 'bf16', '--compile', 'default')['amp'] == 'bf16'
    assert config_of(*TINY, '--cfg', '{"compile": "default"}', '--compile', 'none')['compile'] is None
    assert [config_of(*TINY, '--drw', v)['drw'] for v in ('False', 'true')] == [False, True]   # the older spelling
    p = run('ala_train', *TINY, '--resume', 'True')
    assert p.returncode == 2 and p.stderr.splitlines() == [
        'ala_train: error: unrecognized arguments: True (--resume takes no value: give --resume)']

SAFE = ('--out', '{tmp}/sweep', '--extra', '--epochs 0')   # should a sweep start after all: its runs fail at once, in tmp

@pytest.mark.parametrize('name,args,want', [
    ('ala_sweep', ['--methods', 'ce,xyz', *SAFE], "argument --methods: unknown method 'xyz'"),
    ('ala_sweep', ['--preset', 'cifar1000_lt', *SAFE], "argument --preset: unknown preset 'cifar1000_lt'"),
    ('ala_figures', [], 'the following arguments are required: RUN_DIRS'),
    ('ala_cache', ['/nonexistent', 'x.txt', 'out', '--num-classes', '3', '--max-aspect', '1.5'], '/nonexistent'),
    ('ala_bench', ['--parts', 'loss', '--batch-size', '0', '--out', '{tmp}/b.json'], '--batch_size must be >= 1, got 0'),
    ('ala_bench', ['--parts', 'loss,speed'], "argument --parts: unknown part 'speed'"),
    ('ala_eval', ['/nonexistent', '--batch-size', '4', '--tau-la', '1', '--device', 'cpu'], '/nonexistent'),
    ('ala_eval', ['/nonexistent', '--split', 'train'], "argument --split: unknown split 'train'; choose from test, val"),
    ('ala_table', ['/nonexistent', '--baseline', 'CE', '--json'], '/nonexistent'),
])
def test_every_script_one_line_errors_and_both_spellings(tmp_path, name, args, want):
    "A hyphenated flag reaches the script (its own error, not argparse's 'unrecognized'); bad names fail in one line."
    p = run(name, *[a.replace('{tmp}', str(tmp_path)) for a in args])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'{name}: error: ') and want in lines[0], p.stderr

# --- config files --------------------------------------------------------------------------------------------------------

def test_config_files(tmp_path):
    want = config_of(*TINY, '--epochs', '2', '--loss', 'ldam', '--cfg', '{"sampler": "sqrt"}', '--out', tmp_path/'a')
    (tmp_path/'a').mkdir(); (tmp_path/'a'/'config.json').write_text(json.dumps(want))
    (tmp_path/'c.yaml').write_text('preset: fmnist_lt_tiny\nepochs: 2\nloss: ldam\nsampler: sqrt\ndevice: cpu\n')
    (tmp_path/'x.yaml').write_text('lr: abc\n'); (tmp_path/'y.yaml').write_text('epoch: 3\n')
    for src in (tmp_path/'a'/'config.json', tmp_path/'a', tmp_path/'c.yaml'):
        got = config_of('--config', src, '--out', tmp_path/'b')
        assert got == dict(want, out=str(tmp_path/'b')), src
    assert config_of('--cfg', tmp_path/'a'/'config.json', '--out', tmp_path/'b') == dict(want, out=str(tmp_path/'b'))
    assert config_of('--config', tmp_path/'c.yaml', '--epochs', '3', '--out', tmp_path/'b')['epochs'] == 3  # flags win
    (tmp_path/'h.yaml').write_text('preset: fmnist_lt_tiny\nepochs: 2\nloss: ldam\nsampler: sqrt\ndevice: cpu\nlr: 5e-2\nbatch-size: 16\n')
    got = config_of('--config', tmp_path/'h.yaml', '--out', tmp_path/'b')       # YAML's 5e-2 a number, batch-size a field
    assert got == dict(want, out=str(tmp_path/'b'), lr=0.05, batch_size=16)
    assert config_of('--config', '{"preset": "fmnist_lt_tiny", "lr": 0.5}', '--out', tmp_path/'b')['lr'] == 0.5   # inline JSON
    for args, msg in [(['--config', tmp_path/'nope.json'], 'nope.json: config file not found'),
                      (['--config', tmp_path], 'a folder without config.json'),
                      (['--config', tmp_path/'c.yaml', '--preset', 'cifar10_lt'], 'is a fmnist_lt_tiny config'),
                      (['--config', tmp_path/'x.yaml'], "x.yaml: lr 'abc': expected a number"),
                      (['--config', tmp_path/'y.yaml'], "y.yaml: unknown TrainConfig field(s) 'epoch' (did you mean 'epochs'?)")]:
        p = run('ala_train', *args, '--print-config')
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr

# --- data: --download and the error that names it -----------------------------------------------------------------------

def test_missing_cifar_names_the_flags(tmp_path):
    p = run('ala_train', '--preset', 'cifar10_lt', '--data_root', tmp_path, '--out', tmp_path/'r')
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert '--data_root DIR' in lines[0] and '--download' in lines[0] and str(tmp_path/'cifar-10-batches-py') in lines[0]
    assert 'root=' not in lines[0] and 'download=True' not in lines[0]
    assert not (tmp_path/'r').exists()
    p = run('ala_train', '--preset', 'imagenet_lt_r50', '--download', '--out', tmp_path/'r')
    assert p.returncode == 2 and 'imagenet_lt must be prepared by hand' in p.stderr

# --- logs: progress lines in a piped run, TensorBoard events, and a rerun from the run's config ---------------------------

@pytest.fixture(scope='module')
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('cli')/'tiny'
    p = run('ala_train', *TINY, '--out', out, '--progress-every', '0.01', '--tensorboard', env=dict(ALA_TEST_STEP_DELAY='0.02'))
    assert p.returncode == 0, p.stderr
    return out, p

PROGRESS = re.compile(r'^epoch +(\d)/3  step (\d+)/(\d+) \(\d+%\)  [\d,]+ img/s  epoch ETA \S+  run ETA \S+$')

def test_piped_progress_lines(logged_run):
    _, p = logged_run
    assert '\r' not in p.stdout and '\x1b' not in p.stdout
    prog = [PROGRESS.match(l) for l in p.stdout.splitlines() if 'ETA' in l]
    assert prog and all(prog), [l for l in p.stdout.splitlines() if 'ETA' in l and not PROGRESS.match(l)]
    assert {m.group(1) for m in prog} == {'1', '2', '3'}
    assert all(0 < int(m.group(2)) <= int(m.group(3)) for m in prog)

def test_tensorboard_events_match_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _ = logged_run
    assert list((out/'tb').glob('events.out.tfevents.*'))
    ea = EventAccumulator(str(out/'tb')); ea.Reload()
    m = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    ev = ea.Scalars('top1/all')
    assert [e.step for e in ev] == [r['epoch'] for r in m] == [1, 2, 3]
    assert [e.value for e in ev] == pytest.approx([r['top1']['all'] for r in m], abs=1e-6)
    assert {'train/loss', 'train/lr', 'top1/many', 'top1/few'} <= set(ea.Tags()['scalars'])

def test_rerun_from_a_run_folder(logged_run):
    out, _ = logged_run
    again = out.parent/'again'
    p = run('ala_train', '--config', out, '--out', again, '--no-tensorboard', '--progress-every', '0')
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((d/'final.json').read_text()) for d in (out, again))
    assert (a['top1'], a['per_class']) == (b['top1'], b['per_class'])
    ca, cb = (json.loads((d/'config.json').read_text()) for d in (out, again))
    assert {k for k in ca if ca[k] != cb[k]} == {'out', 'tensorboard', 'progress_every'}
    assert not (again/'tb').exists() and 'ETA' not in p.stdout

# --- ala_figures: no torch at all; matplotlib an extra --------------------------------------------------------------------

def test_figures_without_torch(tmp_path):
    p, mods = imports('ala_figures', STUDY/'ce-seed0', STUDY/'ala_drw-seed0', '--out', tmp_path/'f', '--dpi', 30)
    assert p.returncode == 0, p.stderr
    assert 'torch' not in mods and 'matplotlib' in mods
    assert (tmp_path/'f'/'fig1_per_class.png').is_file()

def test_figures_without_matplotlib(tmp_path):
    "matplotlib made unimportable: the real console script says what to install, in one line."
    wrapper = tmp_path/'no_mpl.py'
    wrapper.write_text("import sys, runpy\nsys.modules['matplotlib'] = None\nsys.argv = sys.argv[1:]\n"
                       "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    p = subprocess.run([sys.executable, wrapper, script('ala_figures'), STUDY/'ce-seed0', '--out', tmp_path/'f'],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert (p.returncode, p.stderr) == (2, "ala_figures needs matplotlib: pip install 'ala_nb[figures]'\n")
    assert not (tmp_path/'f').exists()

# --- notebooks never export when run ---------------------------------------------------------------------------------------

def test_no_notebook_runs_nbdev_export():
    bad = []
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            s = ''.join(c['source'])
            if c['cell_type'] == 'code' and re.search(r'\bnbdev_export\s*\(|\bnb_export\s*\(', s) and '#| eval: false' not in s:
                bad.append(nb.name)
    assert not bad, f"cells that rewrite ala_nb/ when the notebook runs: {bad}"
