"""`ala_train` under several processes on the CPU (gloo): one run with identical weights on every rank and files written
once; ranks that disagree (settings, resume point) refused on every rank; an elastic restart that resumes by itself."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch

from clitools import ROOT, ENV, RANK_DUMP, script, delay

TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu']

def torchrun(*args, nproc=2, extra=(), timeout=400, env=None, popen=False, log=None):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc), *extra,
           script('ala_train'), *map(str, args)]
    if popen: return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env or ENV)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env or ENV)

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def nodes(*argvs, timeout=300):
    "Start one process per argv as ranks 0..N-1 of one group, each as if on its own node (LOCAL_RANK 0); wait for all."
    port, procs = free_port(), []
    for r, argv in enumerate(argvs):
        env = dict(ENV, RANK=str(r), WORLD_SIZE=str(len(argvs)), LOCAL_RANK='0', LOCAL_WORLD_SIZE='1',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, script('ala_train'), *map(str, argv)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env))
    return [(p.returncode, *p.communicate(timeout=timeout)) if p.wait(timeout=timeout) is not None else None for p in procs]

@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')/'run'
    p = torchrun(*TINY, '--out', out, env=dict(ENV, **RANK_DUMP))
    assert p.returncode == 0, p.stdout + p.stderr
    return out, p

def test_torchrun_two_processes(ddp_run):
    out, p = ddp_run
    h = [json.loads((out/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert h[0]['rank'] == 0 and h[1]['rank'] == 1 and h[0]['sha256'] == h[1]['sha256']
    assert sorted(os.listdir(out)) == sorted(['adjust_trace.jsonl', 'checkpoint.pt', 'checkpoint.prev.pt', 'config.json',
                                              'final.json', 'metrics.csv', 'metrics.jsonl', 'rank0.json', 'rank1.json', 'test_outputs.npz'])
    assert [json.loads(l)['epoch'] for l in (out/'metrics.jsonl').read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(l)['epoch'] for l in (out/'adjust_trace.jsonl').read_text().splitlines()] == [1, 2, 3]
    assert p.stdout.count('top-1 %') == 1 and sum(l.startswith('epoch ') for l in p.stdout.splitlines()) == 3
    fin = json.loads((out/'final.json').read_text())
    assert fin['world_size'] == 2 and fin['epochs'] == 3
    # the sharded, gathered evaluation equals one process evaluating the saved weights
    from ala_nb.config import get_config
    from ala_nb.checkpoint import load_checkpoint
    from ala_nb.build import build_run
    from ala_nb.evaluate import evaluate
    r = build_run(get_config('fmnist_lt_tiny', device='cpu'))
    r.net.load_state_dict(load_checkpoint(out)['model'])
    o = evaluate(r.net, r.eval_loaders['final'], r.device, r.logit_scale)
    z = np.load(out/'test_outputs.npz')
    assert len(z['target']) == 200
    np.testing.assert_array_equal(z['target'], o['target'].numpy())
    np.testing.assert_array_equal(z['pred'], o['pred'].numpy())
    np.testing.assert_allclose(z['p_true'], o['p_true'].numpy(), rtol=1e-4, atol=1e-6)

def _one_error_each(res, want):
    for r, (code, out, err) in enumerate(res):
        lines = err.strip().splitlines()
        assert code == 2, (r, code, out[-1500:], err[-1500:])
        if r == 0: assert len(lines) == 1 and want in lines[0] and 'Traceback' not in err, err[-2000:]

def test_nodes_with_different_settings_are_refused(tmp_path):
    "Two 'nodes' launched with `--loss ala` and `--loss ldam` (same model shape): refused before the first step."
    res = nodes([*TINY, '--out', tmp_path/'run'], [*TINY, '--loss', 'ldam', '--out', tmp_path/'run'])
    _one_error_each(res, "the ranks disagree: loss 'ala' on rank 0, 'ldam' on rank 1")
    assert not (tmp_path/'run').exists()

def test_nodes_with_different_heads_are_refused_by_name(tmp_path):
    "`--loss ala` (cosine head) and `--loss ce` (linear head): the ranks agree before DDP compares the models; every rank says why."
    res = nodes([*TINY, '--out', tmp_path/'run'], [*TINY, '--loss', 'ce', '--out', tmp_path/'run'])
    _one_error_each(res, "the ranks disagree: loss 'ala' on rank 0, 'ce' on rank 1")
    assert all('DDP' not in err and 'Traceback' not in err for _, _, err in res), res
    assert "loss 'ala' on rank 0" in res[1][2], res[1][2][-2000:]   # rank 1 says it too
    assert not (tmp_path/'run').exists()

def test_resume_without_a_shared_folder_is_refused(tmp_path):
    "Each node its own --out: rank 0's holds a checkpoint, rank 1's none. Both stop; nothing is trained or written."
    a, b = tmp_path/'a', tmp_path/'b'
    p = subprocess.run([sys.executable, script('ala_train'), *TINY, '--epochs', '2', '--out', str(a)], capture_output=True,
                       text=True, cwd=ROOT, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    before = {f: (a/f).read_bytes() for f in os.listdir(a)}
    res = nodes([*TINY, '--epochs', '3', '--resume', '--out', a], [*TINY, '--epochs', '3', '--resume', '--out', b])
    _one_error_each(res, 'resume point epoch 3 step 0')
    assert 'a fresh start on rank 1' in res[0][2]
    assert {f: (a/f).read_bytes() for f in os.listdir(a)} == before and not b.exists()

def test_elastic_restart_resumes_by_itself(ddp_run, tmp_path):
    "torchrun --max_restarts 1 with no --resume: a killed worker restarts the group, which resumes; same weights as uninterrupted."
    ref, _ = ddp_run
    out = tmp_path/'run'
    env = dict(ENV, TORCH_DISABLE_SHARE_RDZV_TCP_STORE='1', **RANK_DUMP, **delay(0.05))
    with open(tmp_path/'log', 'w') as log:
        p = torchrun(*TINY, '--out', out, extra=('--max_restarts', '1'),
                     env=env, popen=True, log=log)
        t = time.time()
        while time.time() - t < 240:
            try:
                if torch.load(out/'checkpoint.pt', weights_only=True)['epoch'] >= 1: break
            except Exception: pass
            time.sleep(0.1)
        time.sleep(0.3)
        kids = subprocess.run(['pgrep', '-P', str(p.pid)], capture_output=True, text=True).stdout.split()
        assert kids, 'no worker processes found'
        os.kill(int(kids[-1]), signal.SIGKILL)                       # one worker dies mid-epoch 2
        p.wait(timeout=400)
    log = (tmp_path/'log').read_text()
    assert p.returncode == 0, log[-4000:]
    assert f'resuming {out} at epoch 2' in log, log[-4000:]
    h = [json.loads((out/f'rank{r}.json').read_text())['sha256'] for r in (0, 1)]
    assert h[0] == h[1] == json.loads((ref/'rank0.json').read_text())['sha256']
    assert [json.loads(l)['epoch'] for l in (out/'metrics.jsonl').read_text().splitlines()] == [1, 2, 3]
