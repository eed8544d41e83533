"`ala_train` under `torchrun --nproc_per_node 2` on the CPU (gloo): one run, identical weights on both ranks, files written once, evaluation equal to one process's."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, torch

from clitools import ROOT, ENV, script

def test_torchrun_two_processes(tmp_path):
    out = tmp_path/'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', script('ala_train'),
           '--preset', 'fmnist_lt_tiny', '--out', str(out), '--cfg', '{"debug_rank_dump": true}']
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    # both ranks end with identical weights (parameters and BatchNorm buffers)
    h = [json.loads((out/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert h[0]['rank'] == 0 and h[1]['rank'] == 1 and h[0]['sha256'] == h[1]['sha256']
    # only rank 0 wrote: every file once, one metrics line per epoch, one result table
    assert sorted(os.listdir(out)) == sorted(['adjust_trace.jsonl', 'checkpoint.pt', 'checkpoint.prev.pt', 'config.json',
                                              'final.json', 'metrics.jsonl', 'rank0.json', 'rank1.json', 'test_outputs.npz'])
    assert [json.loads(l)['epoch'] for l in (out/'metrics.jsonl').read_text().splitlines()] == [1, 2, 3]
    assert [json.loads(l)['epoch'] for l in (out/'adjust_trace.jsonl').read_text().splitlines()] == [1, 2, 3]
    assert p.stdout.count('top-1 %') == 1 and sum(l.startswith('epoch ') for l in p.stdout.splitlines()) == 3
    fin = json.loads((out/'final.json').read_text())
    assert fin['world_size'] == 2 and fin['epochs'] == 3
    # the sharded, gathered evaluation equals one process evaluating the saved weights
    from ala_nb.train import build_run, get_config, evaluate, load_checkpoint
    r = build_run(get_config('fmnist_lt_tiny'))
    r.net.load_state_dict(load_checkpoint(out)['model'])
    o = evaluate(r.net, r.eval_loaders['final'], r.device, r.logit_scale)
    z = np.load(out/'test_outputs.npz')
    assert len(z['target']) == 200
    np.testing.assert_array_equal(z['target'], o['target'].numpy())
    np.testing.assert_array_equal(z['pred'], o['pred'].numpy())
    np.testing.assert_allclose(z['p_true'], o['p_true'].numpy(), rtol=1e-4, atol=1e-6)
