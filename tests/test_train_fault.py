"Crash safety: kill -9 and SIGTERM mid-run, then `--resume`, end bit-identical to an uninterrupted run; a truncated checkpoint falls back to the previous one; a non-finite loss keeps the last good checkpoint."
import json, os, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path
import pytest, torch

from clitools import ROOT, run, start, delay
TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu']

def run_cli(*args, timeout=300): return run('ala_train', *args, timeout=timeout)

def start_cli(*args, log, env=None): return start('ala_train', *args, log=log, env=env)

def ckpt(out): return torch.load(Path(out)/'checkpoint.pt', weights_only=True)

def assert_same_weights(a, b):
    ma, mb = ckpt(a)['model'], ckpt(b)['model']
    assert ma.keys() == mb.keys()
    for k in ma: assert torch.equal(ma[k], mb[k]), f'{k} differs'

def metrics(out):  # every field but the wall clock
    return [{k: v for k, v in json.loads(l).items() if k != 'wall_s'} for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]

def wait_for_epoch(out, epoch, proc, timeout=240):
    "Wait until the checkpoint after `epoch` is on disk."
    t = time.time()
    while time.time() - t < timeout:
        assert proc.poll() is None, 'the run ended before it could be interrupted'
        try:
            if ckpt(out)['epoch'] >= epoch: return
        except Exception: pass
        time.sleep(0.05)
    raise TimeoutError

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp('ref')/'run'
    p = run_cli(*TINY, '--out', out)
    assert p.returncode == 0, p.stderr
    return out

def test_kill9_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path/'run'
    with open(tmp_path/'log', 'w') as log:
        p = start_cli(*TINY, '--out', out, log=log, env=delay(0.05))
        wait_for_epoch(out, 1, p)
        time.sleep(0.3)                                  # into epoch 2 (13 steps of >= 0.05 s)
        os.kill(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (out/'final.json').exists()
    assert ckpt(out)['epoch'] == 1                       # epoch 2 was cut short
    r = run_cli(*TINY, '--out', out, '--resume')
    assert r.returncode == 0, r.stderr
    assert 'resuming' in r.stdout and 'at epoch 2' in r.stdout
    assert_same_weights(out, reference)
    assert metrics(out) == metrics(reference)
    assert json.loads((out/'final.json').read_text())['top1'] == json.loads((reference/'final.json').read_text())['top1']

def test_sigterm_saves_mid_epoch_and_resumes_exactly(reference, tmp_path):
    out = tmp_path/'run'
    with open(tmp_path/'log', 'w') as log:
        p = start_cli(*TINY, '--out', out, log=log, env=delay(0.1))
        wait_for_epoch(out, 1, p)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    text = (tmp_path/'log').read_text()
    assert p.returncode == 143, text                    # EXIT_PREEMPTED: not a finished run
    assert 'preempted (SIGTERM) in epoch 2' in text
    st = ckpt(out)
    assert st['epoch'] == 1 and 0 < st['step'] < 13, (st['epoch'], st['step'])   # a mid-epoch checkpoint
    assert not (out/'final.json').exists()
    r = run_cli(*TINY, '--out', out, '--resume')
    assert r.returncode == 0, r.stderr
    assert f"at epoch 2, step {st['step']}" in r.stdout
    assert_same_weights(out, reference)
    assert metrics(out) == metrics(reference)           # the interrupted epoch's loss too

def test_truncated_checkpoint_falls_back_to_previous(reference, tmp_path):
    out = tmp_path/'run'
    p = run_cli(*TINY, '--out', out, '--epochs', '2')    # a 2-epoch run: checkpoint after 2, previous after 1
    assert p.returncode == 0, p.stderr
    done = {k: v.clone() for k, v in ckpt(out)['model'].items()}
    c = out/'checkpoint.pt'
    c.write_bytes(c.read_bytes()[:c.stat().st_size // 2])
    r = run_cli('--out', out, '--resume')                # settings come from the run folder
    assert r.returncode == 0, r.stderr
    warn = [l for l in r.stdout.splitlines() if l.startswith('warning:')]
    assert len(warn) == 1 and 'checkpoint.pt' in warn[0] and 'falling back to' in warn[0] and 'checkpoint.prev.pt' in warn[0]
    assert 'at epoch 2' in r.stdout
    new = ckpt(out)['model']
    for k in done: assert torch.equal(done[k], new[k]), k   # epoch 2 retrained from epoch 1: same weights
    assert [m['epoch'] for m in metrics(out)] == [1, 2]

def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    "In-process: a loss that turns NaN in epoch 2 stops the run; the epoch-1 checkpoint stays, nothing else is written."
    import ala_nb.train as T, ala_nb.build as B
    from ala_nb.config import get_config
    make = B.make_loss
    def nan_later(name, counts, **kw):
        lf = make(name, counts, **kw); fwd, n = lf.forward, [0]
        def forward(*a):
            n[0] += 1
            l = fwd(*a)
            return l * float('nan') if n[0] > 13 + 3 else l
        lf.forward = forward
        return lf
    monkeypatch.setattr(B, 'make_loss', nan_later)   # make_parts builds the loss
    cfg = get_config('fmnist_lt_tiny', out=str(tmp_path/'run'), device='cpu')
    with pytest.raises(T.NonFiniteLoss, match=r'non-finite training loss in epoch 2, by step 5; .*after epoch 1\), is kept'):
        T.train(cfg)
    st = ckpt(tmp_path/'run')
    assert st['epoch'] == 1 and all(torch.isfinite(v).all() for v in st['model'].values() if v.is_floating_point())
    assert not (tmp_path/'run'/'final.json').exists()
    assert [m['epoch'] for m in metrics(tmp_path/'run')] == [1]
