"Second stages (cRT, LWS, DisAlign) on a real tiny first stage: only the head trains, the equations hold, the sampler is balanced, resume is bit-identical after kill -9 and SIGTERM, and a first stage that is unfinished or changed is refused."
import json, math, os, shutil, signal, time
from dataclasses import replace
from pathlib import Path
import pytest, torch, torch.nn.functional as F

from clitools import run, start, delay
from ala_nb.methods import method_names
from ala_nb.checkpoint import state_digest, save_checkpoint
from ala_nb.models import create_model

CRT, LWS, DISALIGN = method_names('second_stage')
TINY = ['--preset', 'fmnist_lt_tiny', '--device', 'cpu']

def ckpt(out): return torch.load(Path(out)/'checkpoint.pt', weights_only=True)
def final(out): return json.loads((Path(out)/'final.json').read_text())
def metrics(out): return [{k: v for k, v in json.loads(l).items() if k != 'wall_s'}
                          for l in (Path(out)/'metrics.jsonl').read_text().splitlines()]

@pytest.fixture(scope='module')
def first(tmp_path_factory):
    "A finished 2-epoch CE run of fmnist_lt_tiny."
    out = tmp_path_factory.mktemp('first')/'ce'
    p = run('ala_train', *TINY, '--loss', method_names()[0], '--epochs', '2', '--out', out)
    assert p.returncode == 0, p.stderr
    return out

def stage_cfg(first, loss, **kw):
    from ala_nb.second_stage import stage_config, pin_first_stage
    return pin_first_stage(stage_config(str(first), loss, device='cpu', **kw))

def first_net(first):
    st = ckpt(first)
    net = create_model('resnet8', st['model_spec']['num_classes'], normed=False, in_chans=1)
    net.load_state_dict(st['model'])
    return net.eval()

def test_crt_trains_only_a_new_classifier(first):
    from ala_nb.second_stage import build_stage_run
    from ala_nb.train import train_one_epoch
    from ala_nb.step import EpochStats
    run_ = build_stage_run(stage_cfg(first, CRT, epochs=1))
    fs = ckpt(first)['model']
    head0 = {k: v.clone() for k, v in run_.net.head.state_dict().items()}
    assert not torch.equal(head0['weight'], fs['linear.weight'])                  # re-initialised
    assert [n for n, p in run_.net.named_parameters()] == ['head.weight', 'head.bias']
    train_one_epoch(run_, 0, EpochStats(len(run_.counts), run_.device))
    bb = run_.net.backbone.state_dict()
    assert set(bb) == {k for k in fs if not k.startswith('linear.')}
    for k, v in bb.items(): assert torch.equal(v, fs[k]), f'backbone {k} changed'   # weights and BatchNorm buffers
    assert not torch.equal(run_.net.head.weight.detach(), head0['weight'])         # the classifier trained

def test_lws_scales_the_first_stage_logits(first):
    from ala_nb.second_stage import stage_parts
    cfg = stage_cfg(first, LWS)
    p = stage_parts(cfg, [1] * 10, 'cpu')
    assert [n for n, _ in p.model.named_parameters()] == ['head.scales']
    s = torch.linspace(0.5, 2., 10, dtype=torch.float32)
    with torch.no_grad(): p.model.head.scales.copy_(s)
    x = torch.randn(4, 1, 28, 28)
    want = first_net(first)(x).double() * s.double()                              # s_j · (w_j·x + b_j), the first stage's logits
    torch.testing.assert_close(p.model.eval()(x).double(), want, rtol=1e-5, atol=1e-5)

def test_disalign_grw_loss(first):
    from ala_nb.second_stage import stage_parts
    counts = [40, 20, 10, 8, 6, 5, 4, 3, 2, 1]
    p = stage_parts(stage_cfg(first, DISALIGN), counts, 'cpu')
    z, y = torch.randn(6, 10, dtype=torch.float64), torch.tensor([0, 9, 3, 3, 1, 7])
    r = [c / sum(counts) for c in counts]
    w = [(1 / v) ** 1.2 for v in r]; w = [v * 10 / sum(w) for v in w]
    nll = [-(z[i, y[i]] - torch.logsumexp(z[i], 0)) for i in range(6)]
    want = sum(w[int(y[i])] * nll[i] for i in range(6)) / sum(w[int(t)] for t in y)
    assert math.isclose(float(p.loss(z, y)), float(want), rel_tol=1e-5)

def test_balanced_batches(first):
    from ala_nb.second_stage import build_stage_run
    run_ = build_stage_run(stage_cfg(first, CRT))
    assert max(run_.counts) / min(run_.counts) >= 30                               # the data are long-tailed
    ys = []
    for e in range(20):
        run_.train_loader.set_epoch(e); ys += [y for _, y in run_.train_loader]
    f = torch.bincount(torch.cat(ys), minlength=10).double()
    f = f / f.sum()
    assert ((f - 0.1).abs() < 0.02).all(), f

def test_stage_run_folder(first, tmp_path):
    out = tmp_path/'lws'
    p = run('ala_train', '--first_stage', first, '--loss', LWS, '--epochs', '2', '--device', 'cpu', '--out', out)
    assert p.returncode == 0, p.stderr
    cfg, fin = json.loads((out/'config.json').read_text()), final(out)
    digest = state_digest(ckpt(first)['model'])
    assert (cfg['first_stage'], cfg['first_stage_sha256'], cfg['loss'], cfg['sampler']) == (str(first), digest, LWS, 'balanced')
    assert (fin['loss'], fin['drw'], fin['model']['stage'], fin['model']['first_stage_sha256']) == (LWS, False, LWS, digest)
    assert list(ckpt(out)['model']) == ['head.scales']
    assert (out/'test_outputs.npz').is_file()
    from ala_nb.runs import load_run, method_label
    assert method_label(load_run(out).final['loss'], False) == 'LWS'

def test_ala_eval_rebuilds_the_stage(first, tmp_path):
    "A second stage's checkpoint holds its head alone: ala_eval rebuilds the network from the first stage (checksum checked)."
    outs = {}
    for loss in (CRT, LWS, DISALIGN):
        outs[loss] = out = tmp_path/loss
        p = run('ala_train', '--first_stage', first, '--loss', loss, '--epochs', '1', '--device', 'cpu', '--out', out)
        assert p.returncode == 0, p.stderr
        p = run('ala_eval', out, '--json', '--device', 'cpu')
        assert p.returncode == 0, p.stderr
        j = json.loads(p.stdout)
        assert (j['top1'], j['per_class']) == (final(out)['top1'], final(out)['per_class']), loss   # the run's own test numbers
    p = run('ala_eval', outs[LWS], '--tau_norm', '1', '--device', 'cpu')
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and 'no linear classifier head' in p.stderr, p.stderr
    changed = tmp_path/'changed'
    shutil.copytree(first, changed)
    p = run('ala_train', '--first_stage', changed, '--loss', LWS, '--epochs', '1', '--device', 'cpu', '--out', tmp_path/'on_changed')
    assert p.returncode == 0, p.stderr
    change_weights(changed)
    p = run('ala_eval', tmp_path/'on_changed', '--device', 'cpu')
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and 'its weights changed since' in p.stderr, p.stderr

def past_epoch_1(args, out, log, step_delay, wait):
    "Start `ala_train *args --out out` slowed by `step_delay` s a step; return it `wait` s after its checkpoint reached epoch 1."
    p = start('ala_train', *args, '--out', out, log=log, env=delay(step_delay))
    t = time.time()
    while not ((out/'checkpoint.pt').exists() and ckpt(out)['epoch'] >= 1):
        assert p.poll() is None and time.time() - t < 240, Path(log.name).read_text()
        time.sleep(0.05)
    time.sleep(wait)
    return p

def change_weights(folder):
    "Change a finished first stage's weights (one bias) and re-save its checkpoint with a fresh digest."
    st = ckpt(folder); st.pop('digest'); st['model']['linear.bias'] += 1
    save_checkpoint(st, folder)

def test_kill9_and_sigterm_resume_bit_identical(first, tmp_path):
    args = ['--first_stage', first, '--loss', CRT, '--epochs', '2', '--device', 'cpu', '--log_every', '1']
    ref = tmp_path/'ref'
    p = run('ala_train', *args, '--out', ref)
    assert p.returncode == 0, p.stderr
    out = tmp_path/'killed'
    with open(tmp_path/'log', 'w') as log:
        p = past_epoch_1(args, out, log, 0.05, 0.3)
        os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (out/'final.json').exists()
    r = run('ala_train', *args, '--out', out, '--resume')
    assert r.returncode == 0, r.stderr
    out2 = tmp_path/'term'
    with open(tmp_path/'log2', 'w') as log:
        p = past_epoch_1(args, out2, log, 0.1, 0.5)
        p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    st = ckpt(out2)
    assert st['epoch'] == 1 and 0 < st['step'], (st['epoch'], st['step'])        # stopped mid-epoch
    r = run('ala_train', *args, '--out', out2, '--resume')
    assert r.returncode == 0, r.stderr
    for o in (out, out2):
        a, b = ckpt(o)['model'], ckpt(ref)['model']
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert metrics(o) == metrics(ref) and final(o)['top1'] == final(ref)['top1']

def test_refusals(first, tmp_path):
    def refused(*args, says):
        p = run('ala_train', *args, '--device', 'cpu')
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, (p.returncode, p.stderr)
    refused('--loss', CRT, '--out', tmp_path/'x', says='is a second stage: give first_stage')
    refused('--first_stage', tmp_path/'nowhere', '--loss', CRT, says='nowhere: no such run folder')
    refused('--first_stage', first, '--out', tmp_path/'x', says='give --loss crt | lws | disalign')
    unfinished = tmp_path/'unfinished'
    shutil.copytree(first, unfinished); (unfinished/'final.json').unlink()
    refused('--first_stage', unfinished, '--loss', CRT, '--out', tmp_path/'y', says=f"{unfinished/'final.json'}: missing")
    changed = tmp_path/'changed'
    shutil.copytree(first, changed)
    out = tmp_path/'stage'
    p = run('ala_train', '--first_stage', changed, '--loss', DISALIGN, '--epochs', '1', '--device', 'cpu', '--out', out)
    assert p.returncode == 0, p.stderr
    change_weights(changed)
    refused('--out', out, '--resume', says=f"{changed/'checkpoint.pt'}: its weights changed since")
    refused('--config', out, '--out', tmp_path/'again', says=f"{changed/'checkpoint.pt'}: its weights changed since")

def test_help_lists_the_second_stages():
    p = run('ala_train', '--help')
    assert p.returncode == 0
    assert all(n in p.stdout for n in (CRT, LWS, DISALIGN)) and '--first-stage' in p.stdout
