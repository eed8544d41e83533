"`ala_bench` from the shell: a tiny CPU run writes the JSON it promises, and an existing results file is never replaced."
import json, os, subprocess, sys
from pathlib import Path
import pytest

from clitools import ROOT, run
TINY = ('--device', 'cpu', '--steps', '2', '--rounds', '1', '--batch_size', '16', '--arch', 'resnet8', '--workers', '0',
        '--threads', '1')

def run_cli(*args, timeout=600): return run('ala_bench', *args, timeout=timeout)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench')/'bench.json'
    p = run_cli(*TINY, '--out', out)
    assert p.returncode == 0, p.stderr
    return out, p

def test_tiny_run_writes_valid_json(tiny):
    out, _ = tiny
    res = json.loads(out.read_text())
    assert set(res) == {'meta', 'loss', 'train', 'captured', 'loader', 'cache', 'deterministic', 'e2e'}
    assert res['e2e'] is None and res['cache'] is None and res['deterministic'] is None
    m = res['meta']
    assert m['device'] == 'cpu' and m['device_name'] and m['threads'] == 1 and m['torch']
    assert [(l['B'], l['C']) for l in res['loss']] == [(512, 8142), (256, 1000)]
    for l in res['loss']: assert (l['compile'], l['dtype'], l['device']) == (None, 'float32', 'cpu')
    for key, step in (('train', 'eager'), ('captured', 'captured')):
        t = res[key]
        assert (t['arch'], t['batch_size'], t['steps'], t['rounds'], t['data'], t['compile'], t['amp'], t['step']) == \
               ('resnet8', 16, 2, 1, 'fmnist32', None, 'off', step)
    eq = res['captured']['equivalence']          # the captured step's losses = eager float32's, on the CPU to the bit
    assert eq['step'] == 'captured' and len(eq['ours']) == len(eq['eager']) == 2
    assert eq['ours'] == eq['eager'] and eq['max_rel_diff'] == 0 and eq['ok'] and not res['captured']['captured']
    ld = res['loader']
    assert not [f for f in os.listdir(out.parent) if f.endswith('.tmp')]

def test_table_on_stdout(tiny):
    _, p = tiny
    lines = p.stdout.splitlines()
    assert lines[0].startswith('ala_bench on cpu') and lines[1].split() == ['ours', 'reference', 'ratio']
    assert [l.split(',')[0] for l in lines[2:]] == ['loss fwd+bwd ms', 'loss fwd+bwd ms', 'train img/s', 'train img/s', 'loader img/s']
    assert all('×' in l for l in lines[2:]) and 'captured step, uncaptured' in lines[5]

def test_cache_and_deterministic_parts(tmp_path):
    "The cache part (stand-in JPEGs, a small model) and the deterministic part, tiny, on the CPU."
    out = tmp_path/'b.json'
    p = run_cli(*TINY, '--parts', 'cache,deterministic', '--cache_arch', 'resnet8', '--cache_images', '8',
                '--cache_batch', '4', '--cache_workers', '1', '--out', out)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    c = res['cache']
    assert (c['model'], c['n_images'], c['batch_size'], c['device']) == ('resnet8', 8, 4, 'cpu')
    assert {'cache_vs_synthetic', 'cache_vs_dataloader'} <= set(c)
    d = res['deterministic']
    assert d['reproducible'] and d['losses'] == d['repeat_losses'] and d['step'] == 'eager'
    assert res['train'] is None and res['loss'] is None
    assert [l[:34].split(',')[0].strip() for l in p.stdout.splitlines()[2:]] == \
           ['resnet8 cache img/s', 'against synthetic data', 'deterministic img/s']

def test_refuses_to_overwrite(tiny):
    out, _ = tiny
    before = out.read_bytes()
    p = run_cli(*TINY, '--out', out)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and 'exists' in p.stderr and '--overwrite' in p.stderr, p.stderr
    assert p.stdout == '' and out.read_bytes() == before

def test_overwrite_replaces(tmp_path):
    out = tmp_path/'b.json'
    out.write_text('old\n')
    p = run_cli(*TINY, '--parts', 'loader', '--out', out, '--overwrite')
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res['loader'] and res['train'] is None and res['loss'] is None
    assert os.listdir(tmp_path) == ['b.json']

@pytest.mark.parametrize('args, needles', [(('--parts', 'loss,speed'), ('part', "'speed'", 'captured, loader')),
                                           (('--amp', 'fp16'), ('the captured step takes bf16 or off',)),
                                           (('--cache_images', '0'), ('--cache_images must be >= 1',)),
                                           (('--data', 'cifar'), ('data', "'cifar'", 'fmnist32, standin')),
                                           (('--steps', '0'), ('--steps must be >= 1',)),
                                           (('--compile', 'fast'), ('compile', "'fast'", 'reduce-overhead')),
                                           (('--out', '/nonexistent/dir/b.json'), ('no folder /nonexistent/dir',))])
def test_bad_input_one_line(tmp_path, args, needles):
    "One line on stderr, exit 2, naming the flag's value and what it may be; no file written."
    p = run_cli('--device', 'cpu', '--out', tmp_path/'b.json', *args, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith('ala_bench: error: ') and all(n in p.stderr for n in needles), p.stderr
    assert not (tmp_path/'b.json').exists()

def test_cuda_asked_without_cuda(tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip('CUDA is available here')
    p = run_cli('--device', 'cuda', '--out', tmp_path/'b.json', timeout=120)
    assert p.returncode == 2 and 'CUDA is not available' in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_device_check_dry_run(tmp_path):
    "bench/device_check.sh --cpu (the notebooks left out): one JSON and one log archive under OUT, every stage's status."
    import tarfile
    out = tmp_path/'out'
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    p = subprocess.run(['bash', str(ROOT/'bench/device_check.sh'), '--cpu', '--skip', 'notebooks'], capture_output=True,
                       text=True, env=env, timeout=900)
    files = sorted(f.name for f in out.rglob('*') if f.is_file())
    assert files == ['device_check.json', 'device_check_logs.tar.gz'], files          # at most 8 come back
    res = json.loads((out/'device_check.json').read_text())
    st = res['summary']['stages']
    assert res['meta']['mode'] == 'cpu' and res['summary']['torch'] and res['summary']['device_name'] == 'cpu'
    assert list(st) == res['meta']['stages'], st                                       # every stage reported, in order
    assert st['ddp_cudagraphs'] == st['pytest_gpu'] == 'needs CUDA', st
    assert st['notebooks'] == 'not run (--skip)' and res['summary']['ok'] is False and p.returncode == 1   # skipped != passed
    assert all(v == 'ok' for k, v in st.items() if k not in ('ddp_cudagraphs', 'pytest_gpu', 'notebooks')), st
    assert res['stages']['protocol']['final']['preset'] == 'fmnist_lt_cifar'
    assert res['summary']['captured']['equivalence']['ok'] and res['summary']['deterministic']['reproducible']
    with tarfile.open(out/'device_check_logs.tar.gz') as t: names = t.getnames()
    assert {'preflight.log', 'protocol.log', 'bench_captured.log', 'pytest_gpu.log'} <= set(names), names
    assert not any(n.endswith('.pt') for n in names)
