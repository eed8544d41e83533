"""The captured step in the training loop (CPU): a SIGTERM mid-epoch saves a checkpoint, `--resume` continues, and the
run ends bit-identical to an uninterrupted run — the captured one and the eager one alike (on the CPU the captured
step runs eagerly and gives `train_step`'s results to the bit). Bad combinations are one line on stderr."""
import json, signal, time
from pathlib import Path
import pytest, torch

from clitools import run, start, delay
TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu']
CAPTURED = '{"step": "captured"}'

def ckpt(out): return torch.load(Path(out)/'checkpoint.pt', weights_only=True)

def metrics(out):  # every field but the wall clock
    return [{k: v for k, v in json.loads(l).items() if k != 'wall_s'} for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]

def assert_same_run(a, b):
    ma, mb = ckpt(a)['model'], ckpt(b)['model']
    assert ma.keys() == mb.keys()
    for k in ma: assert torch.equal(ma[k], mb[k]), f'{k} differs'
    assert metrics(a) == metrics(b)
    assert (Path(a)/'adjust_trace.jsonl').read_text() == (Path(b)/'adjust_trace.jsonl').read_text()

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "An uninterrupted eager run and an uninterrupted captured run of the tiny preset."
    d = tmp_path_factory.mktemp('captured')
    for name, extra in (('eager', ()), ('captured', ('--cfg', CAPTURED))):
        p = run('ala_train', *TINY, '--out', d/name, *extra)
        assert p.returncode == 0, p.stderr
    return d/'eager', d/'captured'

def test_captured_equals_eager(runs):
    eager, captured = runs
    assert json.loads((captured/'config.json').read_text())['step'] == 'captured'
    assert_same_run(captured, eager)

def test_sigterm_mid_epoch_then_resume_is_bit_identical(runs, tmp_path):
    eager, captured = runs
    out = tmp_path/'run'
    with open(tmp_path/'log', 'w') as log:
        p = start('ala_train', *TINY, '--out', out, '--cfg', '{"step": "captured"}', log=log, env=delay(0.1))
        t = time.time()
        while time.time() - t < 240:                       # until the checkpoint after epoch 1 is on disk
            assert p.poll() is None, (tmp_path/'log').read_text()
            try:
                if ckpt(out)['epoch'] >= 1: break
            except Exception: pass
            time.sleep(0.05)
        time.sleep(0.5)                                    # a few steps into epoch 2
        p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    text = (tmp_path/'log').read_text()
    assert p.returncode == 143 and 'preempted (SIGTERM) in epoch 2' in text, text   # EXIT_PREEMPTED
    st = ckpt(out)
    assert st['epoch'] == 1 and 0 < st['step'] < 13 and st['stats'] is not None, (st['epoch'], st['step'])
    assert not (out/'final.json').exists()
    r = run('ala_train', *TINY, '--out', out, '--resume')  # the step comes from the run folder's config
    assert r.returncode == 0, r.stderr
    assert f"at epoch 2, step {st['step']}" in r.stdout
    assert_same_run(out, captured)
    assert_same_run(out, eager)
    assert json.loads((out/'final.json').read_text())['top1'] == json.loads((eager/'final.json').read_text())['top1']

def test_resume_may_not_switch_the_step(runs, tmp_path):
    _, captured = runs
    r = run('ala_train', *TINY, '--out', captured, '--resume', '--cfg', '{"step": "eager"}')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "step 'captured' -> 'eager'" in r.stderr

@pytest.mark.parametrize('cfg, msg', [('{"step": "captured", "amp": "fp16"}', "fp16's GradScaler"),
                                      ('{"step": "captured", "sampler": "balanced"}', "needs sampler 'random'"),
                                      ('{"step": "captured", "compile": "default"}', "drop compile 'default'"),
                                      ('{"step": "graphs"}', "unknown step 'graphs'")])
def test_refused_in_one_line(tmp_path, cfg, msg):
    r = run('ala_train', *TINY, '--out', tmp_path/'run', '--cfg', cfg, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr
    assert not (tmp_path/'run').exists()

def test_two_ranks_captured_equals_eager(tmp_path):
    "torchrun, 2 gloo processes: under DDP the captured step runs uncaptured on the DDP model — the eager DDP run's weights, to the bit."
    import subprocess, sys
    from clitools import ROOT, ENV, RANK_DUMP, script
    h = {}
    for name, cfg in (('eager', '{}'), ('captured', '{"step": "captured"}')):
        out = tmp_path/name
        p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                            script('ala_train'), *TINY, '--out', str(out), '--cfg', cfg],
                           capture_output=True, text=True, timeout=400, cwd=ROOT, env=dict(ENV, **RANK_DUMP))
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        h[name] = [json.loads((out/f'rank{r}.json').read_text())['sha256'] for r in (0, 1)]
        assert h[name][0] == h[name][1]
    assert h['captured'] == h['eager']
    assert metrics(tmp_path/'captured') == metrics(tmp_path/'eager')
