"`ala_eval` from the shell on real run folders: the saved results back exactly, nothing in the run folder touched, the evaluation-time baselines against independent computations, one-line errors, and gathered evaluation under torchrun."
import hashlib, json, shutil, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import numpy as np, pytest, torch

from clitools import ROOT, ENV, run, script
from ala_nb.data import get_lt_data

def ala_eval(*args, **kw): return run('ala_eval', *args, **kw)

def tree(folder:Path)->dict:
    "Every file under `folder` (names, sizes, contents) by its SHA-256."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Two tiny real runs: ALA (cosine head, s = 30) and CE (linear head with bias)."
    d = tmp_path_factory.mktemp('runs')
    for loss in ('ala', 'ce'):
        p = run('ala_train', '--preset', 'fmnist_lt_tiny', '--loss', loss, '--device', 'cpu', '--out', d/loss)
        assert p.returncode == 0, p.stderr[-2000:]
    return dict(ala=d/'ala', ce=d/'ce')

def as_json(*args)->dict:
    p = ala_eval(*args, '--json')
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)

def test_table_and_json_give_back_final_json(runs):
    r = runs['ala']
    before = tree(r)
    p = ala_eval(r)
    assert p.returncode == 0 and p.stderr == '', p.stderr
    fin = json.loads((r/'final.json').read_text())
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{r}: fmnist_lt_tiny ala +DRW seed 0, checkpoint.pt (epoch 3/3), test split: 200 images on cpu")
    assert lines[-3].split() == ['All', 'Many', 'Medium', 'Few']
    assert lines[-1].split()[2:] == [f"{100*fin['top1'][g]:.1f}" for g in ('all', 'many', 'medium', 'few')]
    j = as_json(r)
    assert (j['top1'], j['per_class'], j['counts'], j['groups']) == (fin['top1'], fin['per_class'], fin['counts'], fin['groups'])
    assert (j['split'], j['n'], j['epoch'], j['tau_la'], j['tau_norm'], j['world_size']) == ('test', 200, 3, None, None, 1)
    assert j['model'] == fin['model'] == dict(arch='resnet8', num_classes=10, in_chans=1, normed=True, logit_scale=30.0)
    assert j['config'] == json.loads((r/'config.json').read_text())    # the file carries its run's setting wherever it goes
    assert j['provenance']['world_size'] == 1 and j['provenance']['ala_nb']['version'] == fin['provenance']['ala_nb']['version']
    assert tree(r) == before, 'ala_eval changed the run folder'

def test_out_writes_a_new_file_only(runs, tmp_path):
    r = runs['ala']
    before = tree(r)
    dest = tmp_path/'ala_eval.json'
    p = ala_eval(r, '--json', '--out', dest)
    assert p.returncode == 0, p.stderr
    saved, printed = json.loads(dest.read_text()), json.loads(p.stdout)
    assert saved == printed and saved['top1'] == json.loads((r/'final.json').read_text())['top1']
    assert [f.name for f in tmp_path.iterdir()] == ['ala_eval.json']             # no temporary file left
    content = dest.read_bytes()
    for target, says in ((dest, 'exists; ala_eval does not overwrite'), (r/'eval.json', 'inside the run folder'),
                         (r/'final.json', 'exists; ala_eval does not overwrite')):
        p = ala_eval(r, '--out', target)
        assert p.returncode == 2 and p.stdout == '', p.stdout
        assert p.stderr.count('\n') == 1 and p.stderr.startswith('ala_eval: error: --out') and says in p.stderr, p.stderr
    assert dest.read_bytes() == content and tree(r) == before

@pytest.mark.parametrize('make, args, says', [
    ('nothing', (), 'no such run folder'),
    ('empty', (), 'not a run folder (no config.json, final.json or checkpoint.pt'),
    ('packed', (), 'no such checkpoint (committed study folders keep no checkpoints'),
    ('ala', ('--tau_la', 'nan'), "--tau_la must be a finite number >= 0, got 'nan'"),
    ('ala', ('--tau_la', '-1'), "--tau_la must be a finite number >= 0, got '-1'"),
    ('ala', ('--tau_norm', 'abc'), "--tau_norm must be a finite number >= 0, got 'abc'"),
    ('ala', ('--tau_norm', '1'), 'cosine head (NormedLinear), which divides every class weight by its norm already'),
    ('noval', ('--split', 'val'), 'fmnist_lt has no validation split (the run was trained with val_per_class 0); use --split test'),
    ('noval', ('--tau-la', '0,1'), 'fmnist_lt has no validation split (the run was trained with val_per_class 0)'),
    ('ala', ('--split', 'val', '--tau-la', '0,1'), 'a list of tau is chosen on the validation split and reported on the test split'),
    ('ala', ('--tau-norm', '0,1'), 'cosine head (NormedLinear)'),
    ('ala', ('--split', 'train'), "unknown split 'train'"),
    ('ala', ('--device', 'gpu'), "unknown device 'gpu'"),
    ('ala', ('--checkpoint', 'nope.pt'), 'nope.pt: no such checkpoint'),
    ('ala', ('--batch_size', '0'), '--batch_size must be an integer >= 1, got 0'),
])
def test_bad_input_is_one_line(runs, tmp_path, make, args, says):
    folder = tmp_path/make
    if make == 'empty': folder.mkdir()
    elif make == 'packed':
        from ala_nb.runs import copy_run
        copy_run(runs['ala'], folder)
    elif make == 'ala': folder = runs['ala']
    elif make == 'noval':                                   # a run trained without a validation set
        shutil.copytree(runs['ala'], folder)
        cfg = json.loads((folder/'config.json').read_text()); cfg['val_per_class'] = 0
        (folder/'config.json').write_text(json.dumps(cfg))
    before = tree(runs['ala'])
    p = ala_eval(folder, *args)
    assert p.returncode == 2 and p.stdout == '', (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith('ala_eval: error: ') and says in p.stderr, p.stderr
    assert tree(runs['ala']) == before

def images_of(run_dir:Path):
    "The run's 200 test images (20 per class, the first of each class), normalised by hand; their classes; the training counts."
    cfg = json.loads((run_dir/'config.json').read_text())
    d = get_lt_data('fmnist_lt', n_max=cfg['n_max'], imb_factor=cfg['imb_factor'], seed=cfg['data_seed'])
    t = d.test_targets.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(t == c)[:20] for c in range(10)]))
    x = (d.test_x[keep].float() / 255 - d.mean[0]) / d.std[0]
    return x, t[keep], np.asarray(d.counts, dtype=np.float64)

def per_class(pred, t): return np.array([(pred[t == c] == c).mean() for c in range(10)])

def shot_means(acc, groups): return {g: float(np.mean(acc[groups[g]])) for g in ('many', 'medium', 'few')} | dict(all=float(acc.mean()))

@pytest.mark.parametrize('loss, scale', [('ce', 1.), ('ala', 30.)])
def test_posthoc_logit_adjustment(runs, loss, scale):
    from ala_nb.eval import load_model
    x, t, counts = images_of(runs[loss])
    with torch.no_grad(): z = scale * load_model(runs[loss])(x).double().numpy()
    for tau in ('0.5', '1.5'):
        j = as_json(runs[loss], '--tau_la', tau)
        acc = per_class((z - float(tau) * np.log(counts / counts.sum())).argmax(1), t)
        np.testing.assert_allclose(j['per_class'], acc, atol=1e-6)
        for g, v in shot_means(acc, j['groups']).items(): assert abs(j['top1'][g] - v) < 1e-6, (g, j['top1'][g], v)
        assert j['tau_la'] == float(tau)
    plain = as_json(runs[loss])
    assert plain['per_class'] == pytest.approx(per_class(z.argmax(1), t).tolist(), abs=1e-6)

def test_tau_normalisation(runs):
    from ala_nb.eval import load_model
    x, t, _ = images_of(runs['ce'])
    net = load_model(runs['ce'])
    W = net.linear.weight.detach().double()
    with torch.no_grad(): f = net.features(x).double()
    for tau in (0., 0.5, 1.):
        j = as_json(runs['ce'], '--tau_norm', tau)
        acc = per_class((f @ (W / W.norm(dim=1, keepdim=True) ** tau).T).argmax(1).numpy(), t)
        np.testing.assert_allclose(j['per_class'], acc, atol=1e-6)
        assert j['tau_norm'] == tau and j['tau_la'] is None
    p = ala_eval(runs['ce'], '--tau_norm', '0.5')
    assert p.returncode == 0 and 'tau-normalised classifier (Kang et al.): w_j / |w_j|^0.5, no bias' in p.stdout

def test_run_folder_without_model_spec(runs, tmp_path):
    "A run folder written before model_spec existed: a warning line, the same network, the same numbers."
    from ala_nb.checkpoint import save_checkpoint
    old = tmp_path/'old'; shutil.copytree(runs['ala'], old)
    st = torch.load(old/'checkpoint.pt', weights_only=True)
    del st['model_spec'], st['digest']; save_checkpoint(st, old)
    fin = json.loads((old/'final.json').read_text()); del fin['model']
    (old/'final.json').write_text(json.dumps(fin))
    p = ala_eval(old, '--json')
    assert p.returncode == 0, p.stderr
    warn = p.stderr.splitlines()
    assert len(warn) == 1 and warn[0].startswith(f'ala_eval: warning: {old}: written before run folders recorded the model'), p.stderr
    j, new = json.loads(p.stdout), as_json(runs['ala'])
    assert (j['top1'], j['per_class'], j['model']) == (new['top1'], new['per_class'], new['model'])

def test_checkpoint_prev_warns_mid_run(runs):
    p = ala_eval(runs['ala'], '--checkpoint', 'checkpoint.prev.pt')
    assert p.returncode == 0, p.stderr
    assert p.stderr.count('\n') == 1 and 'written during training (epoch 2 of 3)' in p.stderr, p.stderr
    assert '(epoch 2/3)' in p.stdout.splitlines()[0]

def test_validation_split(tmp_path):
    "--split val reads Places-LT's validation list (a fake Places-LT of a few images, a resnet8 on 224x224 crops)."
    from PIL import Image
    from ala_nb.config import get_config
    from ala_nb.models import create_model
    from ala_nb.data import imagenet_transform
    from ala_nb.runs import write_json
    from ala_nb.checkpoint import save_checkpoint
    from ala_nb.eval import load_model
    pl = tmp_path/'places'; (pl/'img').mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8): Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(pl/'img'/f'{i}.png')
    lists = dict(train=[(0, 0), (1, 0), (2, 0), (3, 1), (4, 2)], test=[(5, 0), (6, 1)], val=[(7, 0), (0, 1), (3, 2), (4, 2)])
    for k, rows in lists.items(): (pl/f'Places_LT_{k}.txt').write_text(''.join(f'img/{i}.png {y}\n' for i, y in rows))
    with open(pl/'Places_LT_train.txt', 'a') as f:    # every class needs a training image (never read here)
        f.write(''.join(f'img/more/{c}.png {c}\n' for c in range(3, 365)))
    cfg = get_config('places_lt_r152', arch='resnet8', pretrained=None, root=str(pl), num_workers=0, eval_batch_size=3)
    torch.manual_seed(0)
    net = create_model('resnet8', 365, normed=False, in_chans=3)
    run_dir = tmp_path/'run'; run_dir.mkdir()
    write_json(run_dir/'config.json', asdict(cfg))
    spec = dict(arch='resnet8', num_classes=365, in_chans=3, normed=False, logit_scale=1.)
    save_checkpoint(dict(model=net.state_dict(), model_spec=spec, epoch=cfg.epochs, step=0, config=asdict(cfg)), run_dir)
    before = tree(run_dir)
    j = as_json(run_dir, '--split', 'val', '--device', 'cpu')
    tf = imagenet_transform(False)
    x = torch.stack([tf(Image.open(pl/'img'/f'{i}.png').convert('RGB')) for i, _ in lists['val']])
    t = np.array([y for _, y in lists['val']])
    with torch.no_grad(): pred = load_model(run_dir)(x).argmax(1).numpy()
    acc = [float((pred[t == c] == c).mean()) if (t == c).any() else None for c in range(365)]
    assert (j['split'], j['n']) == ('val', 4)
    assert j['per_class'][:3] == pytest.approx(acc[:3], abs=1e-6) and all(a is None for a in j['per_class'][3:])
    assert j['counts'][:3] == [3, 1, 1] and tree(run_dir) == before
    assert as_json(run_dir, '--device', 'cpu')['n'] == 2            # the test list

def test_cached_run_reads_its_cache(tmp_path):
    "A run trained from ala_cache's uint8 caches (data_cache) is evaluated from them, as build_run's evaluation reads them."
    from ala_nb.cache import build_cache
    from ala_nb.testing import write_standin_split
    from ala_nb.config import get_config
    from ala_nb.models import create_model
    from ala_nb.runs import write_json
    from ala_nb.checkpoint import save_checkpoint
    from ala_nb.build import build_run
    from ala_nb.evaluate import evaluate
    sp = tmp_path/'splits'
    write_standin_split(tmp_path/'tr', sp/'Places_LT_train.txt', [(40, 56)] * 6, [0, 0, 0, 1, 1, 2], workers=1)
    write_standin_split(tmp_path/'te', sp/'Places_LT_test.txt', [(48, 40)] * 6, [0, 0, 1, 1, 2, 2], seed=1, workers=1)
    for k in ('tr', 'te'): build_cache(tmp_path/k, sp/f"Places_LT_{dict(tr='train', te='test')[k]}.txt", tmp_path/'cache', workers=1, progress=False)
    for k in ('tr', 'te'): shutil.rmtree(tmp_path/k)                # only the caches are left to read
    cfg = get_config('places_lt_r152', arch='resnet8', loss='ce', pretrained=None, split_dir=str(sp),
                     data_cache=str(tmp_path/'cache'), num_workers=0, eval_batch_size=4, batch_size=4, device='cpu')
    torch.manual_seed(0)
    net = create_model('resnet8', 365, normed=False, in_chans=3)
    run_dir = tmp_path/'run'; run_dir.mkdir()
    write_json(run_dir/'config.json', asdict(cfg))
    save_checkpoint(dict(model=net.state_dict(), model_spec=dict(arch='resnet8', num_classes=365, in_chans=3, normed=False,
                                                                 logit_scale=1.), epoch=cfg.epochs, step=0, config=asdict(cfg)), run_dir)
    j = as_json(run_dir, '--device', 'cpu')
    r = build_run(cfg)
    r.net.load_state_dict(net.state_dict())
    o = evaluate(r.net, r.eval_loaders['final'], r.device, r.logit_scale, None, r.channels_last)
    t, pred = o['target'].numpy(), o['pred'].numpy()
    assert j['n'] == 6 and j['counts'][:3] == [3, 2, 1]
    assert j['per_class'][:3] == pytest.approx([float((pred[t == c] == c).mean()) for c in range(3)], abs=1e-6)

def test_torchrun_gathered_evaluation(runs, tmp_path):
    "Two processes on the CPU (gloo), each evaluating every second test image: the gathered result is one process's."
    dest = tmp_path/'ddp.json'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', script('ala_eval'),
           str(runs['ce']), '--json', '--device', 'cpu', '--tau_la', '1', '--batch_size', '16', '--out', str(dest)]
    before = tree(runs['ce'])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    ddp = json.loads(p.stdout)                                      # rank 0 alone prints: one JSON object
    one = as_json(runs['ce'], '--device', 'cpu', '--tau_la', '1')
    assert (ddp['world_size'], one['world_size'], ddp['n']) == (2, 1, 200)
    assert (ddp['top1'], ddp['per_class']) == (one['top1'], one['per_class'])
    assert json.loads(dest.read_text()) == ddp and tree(runs['ce']) == before


# --- issue 17: how ala_eval ends when its reader goes away or Ctrl-C is pressed ------------------------------------------
from clitools import run_closed_stdout

def test_closed_pipe_is_quiet(runs):
    "`ala_eval RUN | head -1`: no BrokenPipeError traceback; exit 141 (128 + SIGPIPE), as the shell reports `yes | head -1`."
    for args in ((), ('--json',)):
        rc, err = run_closed_stdout('ala_eval', runs['ala'], '--device', 'cpu', *args)
        assert (rc, err) == (141, ''), (rc, err)

@pytest.mark.skipif(not Path('/proc/self/maps').exists(), reason='needs /proc to see when torch is loaded')
def test_ctrl_c_is_one_line(runs):
    "SIGINT while evaluating (torch loaded, one image a batch: seconds of work left): one line and exit 130, nothing written."
    import signal, time
    before = tree(runs['ala'])
    p = subprocess.Popen([sys.executable, script('ala_eval'), runs['ala'], '--device', 'cpu', '--batch_size', '1'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    t0 = time.time()
    while 'libtorch_cpu' not in Path(f'/proc/{p.pid}/maps').read_text():
        assert p.poll() is None and time.time() - t0 < 60, 'ala_eval ended before torch was loaded'
        time.sleep(0.01)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert (p.returncode, out, err) == (130, '', 'ala_eval: interrupted\n'), (p.returncode, out, err[-2000:])
    assert tree(runs['ala']) == before


def test_tau_list_chosen_on_validation(runs):
    "--tau-la 0,1,2: each τ scored on the validation split, the best (first of equals) reported on the test split, all recorded."
    j = as_json(runs['ce'], '--tau-la', '0,1,2')
    val = {t: as_json(runs['ce'], '--split', 'val', '--tau_la', str(t))['top1']['all'] for t in (0., 1., 2.)}
    best = max(val, key=lambda t: (val[t], -t))
    assert j['split'] == 'test' and j['tau_la'] == best and j['chosen']['tau_la'] == best and j['chosen']['on'] == 'val'
    assert [c['top1']['all'] for c in j['chosen']['candidates']] == list(val.values())
    assert j['top1'] == as_json(runs['ce'], '--tau_la', str(best))['top1']
    p = ala_eval(runs['ce'], '--tau-la', '0,1,2')
    assert p.returncode == 0 and 'chosen on the validation split (200 images) by top-1: tau_la=' in p.stdout, p.stdout

# --- issue 17: ala_eval refuses weights that are not the run's own --------------------------------------------------------
def _resaved(src:Path, dest:Path, **config):
    "The checkpoint `src` saved again in `dest` (a run folder) with its config's fields `config` changed."
    from ala_nb.checkpoint import save_checkpoint
    st = torch.load(src, weights_only=True)
    st['config'] = dict(st['config'], **config); del st['digest']
    save_checkpoint(st, dest)

def _foreign(runs, folder:Path, make:str)->tuple: # (extra arguments)
    "A copy of the ALA run, made to hold weights or a config that are not the run's own in the way `make` says."
    shutil.copytree(runs['ala'], folder)
    if make == 'ce_checkpoint': shutil.copy(runs['ce']/'checkpoint.pt', folder/'checkpoint.pt')
    elif make == 'other_seed': _resaved(runs['ala']/'checkpoint.pt', folder, seed=1)
    elif make == 'other_arch':
        _resaved(runs['ala']/'checkpoint.pt', folder, arch='resnet32')
    elif make == 'edited_config':
        c = json.loads((folder/'config.json').read_text()); c['seed'] = 7; c['loss_kw'] = dict(s=20.)
        (folder/'config.json').write_text(json.dumps(c))
    elif make == 'other_spec':
        from ala_nb.checkpoint import save_checkpoint
        st = torch.load(runs['ala']/'checkpoint.pt', weights_only=True)
        st['model_spec'] = dict(st['model_spec'], normed=False); del st['digest']
        save_checkpoint(st, folder)
    elif make == 'other_run': return ('--checkpoint', runs['ce']/'checkpoint.pt')
    return ()

@pytest.mark.parametrize('make, says', [
    ('ce_checkpoint', "checkpoint.pt: not this run's weights: its config differs from config.json in loss: 'ce' in the checkpoint, 'ala' in config.json"),
    ('other_run', "checkpoint.pt: not this run's weights: its config differs from config.json in loss: 'ce' in the checkpoint, 'ala' in config.json"),
    ('other_seed', "checkpoint.pt: not this run's weights: its config differs from config.json in seed: 1 in the checkpoint, 0 in config.json"),
    ('other_arch', "arch: 'resnet32' in the checkpoint, 'resnet8' in config.json"),
    ('edited_config', "loss_kw: {} in the checkpoint, {'s': 20.0} in config.json; seed: 0 in the checkpoint, 7 in config.json"),
    ('other_spec', "checkpoint.pt: not this run's weights: its model_spec differs from final.json's model in normed: False in the checkpoint, True in final.json"),
])
def test_foreign_weights_are_refused(runs, tmp_path, make, says):
    "Weights or a config that are not the run's own: one line naming the fields that differ, exit 2 (as --resume does)."
    folder = tmp_path/make
    args = _foreign(runs, folder, make)
    p = ala_eval(folder, '--device', 'cpu', *args)
    assert p.returncode == 2 and p.stdout == '', (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith('ala_eval: error: ') and says in p.stderr, p.stderr

def test_local_fields_may_differ(runs, tmp_path):
    "Fields a resume may change (eval_batch_size, threads, ...) are not the run's identity: the same numbers come back."
    folder = tmp_path/'local'; shutil.copytree(runs['ala'], folder)
    c = json.loads((folder/'config.json').read_text()); c.update(eval_batch_size=64, threads=None, num_workers=0)
    (folder/'config.json').write_text(json.dumps(c))
    assert as_json(folder)['top1'] == json.loads((folder/'final.json').read_text())['top1']
