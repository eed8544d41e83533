"""ala_nb.captured: the captured step against the eager `train_step` loop (CPU: to the bit), its lr table, resume,
misuse; on a GPU (skipped without CUDA): capture vs eager in bf16, no host sync per step, resume, `bench_step`.
nbs/05_captured.ipynb holds the smaller checks; `bench_step` is in ala_nb.bench."""
import copy, io
from dataclasses import replace
import pytest, torch
from ala_nb.config import PRESETS, get_config
from ala_nb.data import CIFAR_MEAN, CIFAR_STD, DeviceLoader
from ala_nb.losses import class_balanced_weights
from ala_nb.step import EpochStats, apply_drw, lr_factor, make_scheduler, train_step
from ala_nb.captured import CapturedStep
from ala_nb.bench import bench_step
from ala_nb.build import make_parts

def cuda(f): # a GPU test: marked gpu (`pytest -m gpu`), skipped without CUDA
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')(f))
CFG = get_config('cifar10_lt', arch='resnet8', epochs=3, batch_size=16, lr=0.05, warmup_epochs=1,
                 lr_steps=((2, 0.1),), drw_epoch=2)   # epoch 0 warm-up, 1 plateau, 2 lr step + DRW


def parts(cfg=CFG, device='cpu', init=0, n=60, drop_last=False, channels_last=True):
    "Model, loss, SGD, loader and counts of a tiny run: n 32×32 images, 10 classes; weights from seed `init`."
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.cat([torch.arange(10), torch.randint(0, 4, (n - 10,), generator=g)])
    counts = torch.bincount(y, minlength=10).tolist()
    p = make_parts(replace(cfg, seed=init, channels_last=channels_last), counts, device)
    net, lf, opt = p.model, p.loss, p.opt
    dl = DeviceLoader(x, y, cfg.batch_size, CIFAR_MEAN, CIFAR_STD, device=device, seed=cfg.seed, drop_last=drop_last,
                      channels_last=channels_last)
    return net, lf, opt, dl, counts


def eager(cfg=CFG, device='cpu', amp_dtype=None, **kw):
    "The reference loop: apply_drw + set_epoch per epoch, train_step with LambdaLR, EpochStats per epoch."
    net, lf, opt, dl, counts = parts(cfg, device, **kw)
    sch, losses, lrs, stats = make_scheduler(opt, cfg, len(dl)), [], [], []
    for e in range(cfg.epochs):
        apply_drw(lf, cfg, counts, e, device); dl.set_epoch(e)
        st = EpochStats(len(counts), device)
        for x, y in dl:
            lrs.append(opt.param_groups[0]['lr'])
            losses.append(train_step(net, lf, opt, x, y, sch, None, amp_dtype)); st.update(losses[-1], y, lf.terms)
        stats.append(st.state_dict())
    return torch.stack(losses).cpu(), lrs, stats, net


def steps(cs, n, out, lrs=None, weights=None):
    "`n` steps of a CapturedStep, resetting its stats at each epoch's start; collect losses (and lrs, DRW weights)."
    stats = []
    for _ in range(n):
        if cs.global_step % cs.steps_per_epoch == 0: cs.stats.reset()
        out.append(cs().clone())
        if lrs is not None: lrs.append(float(cs.lr))
        if weights is not None: weights.append(None if cs.weight is None else cs.weight.clone())
        if cs.global_step % cs.steps_per_epoch == 0: stats.append(cs.stats.state_dict())
    return stats


def same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor): assert torch.equal(a[k], b[k]), k
        else: assert a[k] == b[k], k


# ---------------------------------------------------------------- CPU: the same results as train_step
@pytest.mark.parametrize('change', [dict(), dict(loss='ce'), dict(loss='ldam'), dict(loss='ce', drw=True),
                                    dict(momentum=0.), dict(nesterov=True), dict(loss='focal', drw=True)])
def test_matches_train_step(change):
    cfg = replace(CFG, **change)
    ref, ref_lrs, ref_stats, ref_net = eager(cfg)
    net, lf, opt, dl, counts = parts(cfg)
    cs = CapturedStep(net, lf, opt, dl, cfg, counts)
    assert (cs.steps_per_epoch, cs._sizes, cs.capture) == (4, [16, 12], False)
    losses, lrs, ws = [], [], []
    stats = steps(cs, 12, losses, lrs, ws)
    assert torch.equal(torch.stack(losses), ref)
    assert torch.equal(torch.tensor(lrs), torch.tensor(ref_lrs, dtype=torch.float32))
    assert len(set(lrs)) >= 5                                         # ramp, plateau and step all taken
    same_state(net.state_dict(), ref_net.state_dict())
    for a, b in zip(stats, ref_stats): same_state(a, b)
    if cs.weight is not None:                                         # DRW on: ones, then class-balanced, in place
        assert all(torch.equal(w, torch.ones(10)) for w in ws[:8])
        assert all(torch.equal(w, class_balanced_weights(counts, cfg.cb_beta)) for w in ws[8:])
        assert lf.weight is cs.weight
    else: assert lf.weight is None or cfg.loss == 'cb_ce'


def test_drw_changes_the_run():
    "The DRW switch is real: without it the last epoch's losses differ (so the tests above can fail)."
    on = eager(CFG)[0]
    off = eager(replace(CFG, drw=False))[0]
    assert torch.equal(on[:8], off[:8]) and not torch.equal(on[8:], off[8:])


def test_drop_last_one_graph_size():
    ref = eager(drop_last=True)[0]
    net, lf, opt, dl, counts = parts(drop_last=True)
    cs = CapturedStep(net, lf, opt, dl, CFG, counts)
    assert (cs.steps_per_epoch, cs._sizes) == (3, [16])
    out = []; steps(cs, 9, out)
    assert torch.equal(torch.stack(out), ref)


def test_single_small_batch():
    "An epoch of one batch smaller than batch_size: only the small shape exists."
    cfg = replace(CFG, batch_size=64)
    ref = eager(cfg)[0]
    net, lf, opt, dl, counts = parts(cfg)
    cs = CapturedStep(net, lf, opt, dl, cfg, counts)
    assert (cs.steps_per_epoch, cs._sizes) == (1, [60])
    out = []; steps(cs, 3, out)
    assert torch.equal(torch.stack(out), ref)


@pytest.mark.parametrize('preset,spe', [('cifar10_lt', 6), ('imagenet_lt_r50', 6), ('fmnist_lt', 7)])
def test_lr_table_is_lr_factor(preset, spe):
    c = replace(PRESETS[preset], warmup_epochs=0.5) if preset == 'fmnist_lt' else PRESETS[preset]
    net, lf, opt, _, counts = parts()
    dl = DeviceLoader(torch.zeros(16 * spe, 3, 32, 32, dtype=torch.uint8), torch.arange(16 * spe) % 10, 16,
                      CIFAR_MEAN, CIFAR_STD)
    cs = CapturedStep(net, lf, opt, dl, c, counts)
    want = [c.lr * lr_factor(c, g // spe, g % spe, spe) for g in range(c.epochs * spe)]
    assert cs.total_steps == c.epochs * spe
    assert torch.equal(cs.lr_table, torch.tensor(want, dtype=torch.float32))


# ---------------------------------------------------------------- CPU: resume
def checkpoint(net, opt, cs):
    buf = io.BytesIO()
    torch.save(dict(model=net.state_dict(), optimizer=opt.state_dict(), step=cs.state_dict(),
                    stats=cs.stats.state_dict()), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize('k', [1, 3, 4, 6, 7, 8, 11])
@pytest.mark.parametrize('build_first', [True, False])
def test_resume_is_exact(k, build_first):
    "Stopped after step k (mid-epoch, before the short last batch, at an epoch/DRW boundary), resumed in new objects."
    ref, _, ref_stats, ref_net = eager()
    net, lf, opt, dl, counts = parts()
    cs = CapturedStep(net, lf, opt, dl, CFG, counts)
    first = []; steps(cs, k, first)
    st = checkpoint(net, opt, cs)
    net2, lf2, opt2, dl2, _ = parts(init=1)
    if build_first: cs2 = CapturedStep(net2, lf2, opt2, dl2, CFG, counts)
    net2.load_state_dict(st['model']); opt2.load_state_dict(st['optimizer'])
    if not build_first: cs2 = CapturedStep(net2, lf2, opt2, dl2, CFG, counts)
    e, s = divmod(k, 4)
    cs2.load_state_dict(dict(global_step=e * cs2.steps_per_epoch + s))   # the checkpoint's (epoch, step) says the same
    assert cs2.state_dict() == st['step']
    if s: cs2.stats.load_state_dict(st['stats'])
    rest = []; steps(cs2, 12 - k, rest)
    assert torch.equal(torch.stack(first + rest), ref)
    same_state(net2.state_dict(), ref_net.state_dict())
    same_state(cs2.stats.state_dict(), ref_stats[-1])


def test_resume_from_an_eager_checkpoint():
    "A checkpoint of the eager loop (float lr, LambdaLR, no momentum buffers yet or some) resumes in a CapturedStep."
    ref = eager()[0]
    net, lf, opt, dl, counts = parts()
    sch = make_scheduler(opt, CFG, len(dl)); dl.set_epoch(0)
    first = [train_step(net, lf, opt, x, y, sch) for x, y in list(dl)[:3]]
    buf = io.BytesIO(); torch.save(dict(model=net.state_dict(), optimizer=opt.state_dict()), buf); buf.seek(0)
    st = torch.load(buf, weights_only=True)
    net2, lf2, opt2, dl2, _ = parts(init=1)
    net2.load_state_dict(st['model']); opt2.load_state_dict(st['optimizer'])
    cs = CapturedStep(net2, lf2, opt2, dl2, CFG, counts); cs.load_state_dict(dict(global_step=3))
    rest = []; steps(cs, 9, rest)
    assert torch.equal(torch.stack(first + rest), ref)


# ---------------------------------------------------------------- CPU: misuse and bad input
@pytest.mark.filterwarnings('ignore:Detected call of')
def test_outside_changes():
    net, lf, opt, dl, counts = parts()
    cs = CapturedStep(net, lf, opt, dl, CFG, counts); cs()
    assert (cs.prepares, opt.param_groups[0]['lr'] is cs.lr, opt.param_groups[0]['fused']) == (1, True, False)
    opt.load_state_dict(copy.deepcopy(opt.state_dict())); cs()
    assert cs.prepares == 2 and opt.param_groups[0]['lr'] is cs.lr
    sch = make_scheduler(opt, CFG, 4); sch.step(); cs()                 # a stray LambdaLR only fill_s the tensor
    assert opt.param_groups[0]['lr'] is cs.lr and float(cs.lr) == float(cs.lr_table[2])
    opt.param_groups[0]['lr'] = 0.1
    with pytest.raises(RuntimeError, match="leave param_groups' 'lr' alone"): cs()
    opt.param_groups[0]['lr'] = cs.lr
    apply_drw(lf, replace(CFG, drw_epoch=0), counts, 0)
    with pytest.raises(RuntimeError, match='do not call apply_drw'): cs()


def test_bad_arguments():
    net, lf, opt, dl, counts = parts()
    with pytest.raises(ValueError, match='needs torch.optim.SGD, got Adam'):
        CapturedStep(net, lf, torch.optim.Adam(net.parameters()), dl, CFG, counts)
    with pytest.raises(ValueError, match='GradScaler'): CapturedStep(net, lf, opt, dl, CFG, counts, amp_dtype=torch.float16)
    with pytest.raises(ValueError, match='capture=True needs CUDA; the loader is on cpu'):
        CapturedStep(net, lf, opt, dl, CFG, counts, capture=True)
    with pytest.raises(ValueError, match=r"stats live on meta, the loader on cpu: make EpochStats\(C, 'cpu'\)"):
        CapturedStep(net, lf, opt, dl, CFG, counts, stats=EpochStats(10, 'meta'))
    with pytest.raises(ValueError, match='the model is on meta, the loader on cpu'):
        CapturedStep(net.to('meta'), lf, opt, dl, CFG, counts)
    cs = CapturedStep(*parts()[:4], CFG, counts)
    for bad in (dict(global_step=-1), dict(global_step=2.0), dict(step=3), dict(global_step=True)):
        with pytest.raises(ValueError, match="'global_step': int >= 0"): cs.load_state_dict(bad)


def test_epochstats_in_place():
    st = EpochStats(3)
    ids = [id(t) for t in (st.loss, st.n, st.terms, st.count)]
    st.update(torch.tensor(2.), torch.tensor([0, 2]), dict(df=torch.ones(2), qf=torch.ones(2), adjust=torch.ones(2)))
    saved = st.state_dict()
    st.reset(); assert (st.mean_loss(), float(st.count.sum()), st.has_terms) == (0., 0., True)
    st.load_state_dict(saved); st.all_reduce()                          # no process group: no-op
    assert st.mean_loss() == 2. and st.count.tolist() == [1., 0., 1.]
    assert [id(t) for t in (st.loss, st.n, st.terms, st.count)] == ids
    with pytest.raises(RuntimeError): st.update(torch.tensor(1.), torch.tensor([0]).to('meta'), dict(
        df=torch.ones(1), qf=torch.ones(1), adjust=torch.ones(1)))    # a batch from another device is refused


def test_bench_step_cpu():
    r = bench_step('resnet8', batch_size=8, steps=2, device='cpu', counts=[12, 8, 4], warmup_steps=1, check_steps=3)
    assert (r['device'], r['amp'], r['images'], r['check_steps'], r['loss_max_abs_diff']) == ('cpu', 'off', 24, 3, 0.)
    with pytest.raises(ValueError, match="unknown amp 'fp16'"): bench_step(device='cpu', amp='fp16')


# ---------------------------------------------------------------- GPU (skipped without CUDA)
@cuda
def test_gpu_captured_matches_eager_bf16():
    ref = eager(device='cuda', amp_dtype=torch.bfloat16)[0]
    net, lf, opt, dl, counts = parts(device='cuda')
    cs = CapturedStep(net, lf, opt, dl, CFG, counts, torch.bfloat16)
    out = []; steps(cs, 12, out)
    got = torch.stack(out).cpu()
    assert (cs.captures, len(cs.graphs)) == (1, 2)
    torch.testing.assert_close(got[:4], ref[:4], rtol=2e-2, atol=0)    # warm-up epoch: bf16 rounding only
    torch.testing.assert_close(got, ref, rtol=1e-1, atol=0)


@cuda
def test_gpu_captured_matches_uncaptured():
    "The graph replays exactly what the same code does eagerly on the GPU (fp32/TF32, same kernels)."
    runs = []
    for capture in (False, True):
        net, lf, opt, dl, counts = parts(device='cuda')
        cs = CapturedStep(net, lf, opt, dl, CFG, counts, capture=capture)
        out = []; steps(cs, 12, out); runs.append((torch.stack(out).cpu(), net.state_dict()))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-3, atol=1e-5)
    for k, v in runs[0][1].items(): torch.testing.assert_close(runs[1][1][k], v, rtol=1e-3, atol=1e-4)


@cuda
def test_gpu_no_host_sync_per_step():
    net, lf, opt, dl, counts = parts(device='cuda', n=160)               # 10 steps per epoch
    cs = CapturedStep(net, lf, opt, dl, CFG, counts, torch.bfloat16)
    cs()                                                                 # captures (syncs), epoch 0's plan made
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(cs.steps_per_epoch - 2): cs()
    finally: torch.cuda.set_sync_debug_mode('default')
    assert cs.global_step == cs.steps_per_epoch - 1 and torch.isfinite(cs.stats.loss).item()


@cuda
def test_gpu_resume_captured():
    runs = []
    for k in (None, 6):
        net, lf, opt, dl, counts = parts(device='cuda')
        cs = CapturedStep(net, lf, opt, dl, CFG, counts, torch.bfloat16)
        out = []
        if k is None: steps(cs, 12, out)
        else:
            steps(cs, k, out); st = checkpoint(net, opt, cs)
            net, lf, opt, dl, _ = parts(device='cuda', init=1)
            cs = CapturedStep(net, lf, opt, dl, CFG, counts, torch.bfloat16)
            net.load_state_dict(st['model']); opt.load_state_dict(st['optimizer'])
            cs.load_state_dict(st['step']); cs.stats.load_state_dict(st['stats'])
            steps(cs, 12 - k, out)
        runs.append((torch.stack(out).cpu(), net.state_dict()))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-2, atol=0)
    for k_, v in runs[0][1].items(): torch.testing.assert_close(runs[1][1][k_], v, rtol=1e-2, atol=1e-3)


@cuda
def test_gpu_epochstats_on_cuda():
    st = EpochStats(4, 'cuda')
    y = torch.tensor([0, 0, 3], device='cuda')
    t = dict(df=torch.tensor([.1, .3, .5], device='cuda'), qf=torch.tensor([1., 1., 3.], device='cuda'),
             adjust=torch.tensor([.1, .3, 1.5], device='cuda'))
    st.update(torch.tensor(2., device='cuda'), y, t)
    tr = st.trace(dict(many=[0], few=[3]))
    assert tr['many'] == pytest.approx(dict(df=.2, qf=1., adjust=.2)) and st.mean_loss() == 2.
    with pytest.raises(RuntimeError): st.update(torch.tensor(1.), y.cpu(), {k: v.cpu() for k, v in t.items()})


@cuda
def test_gpu_bench_step():
    r = bench_step('resnet8', batch_size=32, steps=20, warmup_steps=5, counts=[200, 100, 50, 20])
    assert r['device'].startswith('cuda') and r['amp'] == 'bf16' and r['loss_max_rel_diff'] < 3e-2


# ---------------------------------------------------------------- deterministic + captured, captured resume through train()
def test_deterministic_captured_step_cpu():
    "`deterministic` with the captured step (uncaptured on the CPU): two runs repeat to the bit."
    from ala_nb.bench import bench_data, bench_deterministic
    d = bench_deterministic('cpu', batch_size=16, steps=2, data=bench_data('standin', n_max=50, imb_factor=10),
                            arch='resnet8', step='captured', check_steps=3)
    assert d['step'] == 'captured' and d['reproducible'] and len(d['losses']) == 3 and d['losses'] == d['repeat_losses']


@cuda
def test_gpu_deterministic_captured_step():
    "On CUDA: the captured step (one CUDA graph) under `deterministic` repeats to the bit."
    from ala_nb.bench import bench_data, bench_deterministic
    d = bench_deterministic('cuda', batch_size=32, steps=5, data=bench_data('standin', n_max=200, imb_factor=10),
                            arch='resnet8', step='captured', check_steps=4)
    assert d['step'] == 'captured' and d['reproducible'], d


def _train_cli(out, *args, env=None, **kw):
    import os, subprocess, sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])),
             PYTHONUNBUFFERED='1', **(env or {}))
    cmd = [sys.executable, '-m', 'ala_nb.train_cli', '--preset', 'fmnist_lt_tiny', '--device', 'cuda', '--out', str(out),
           '--cfg', '{"step": "captured", "deterministic": true}', *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=root, **kw)


@cuda
def test_gpu_captured_resume_through_train(tmp_path):
    "A captured, deterministic CUDA run stopped by SIGTERM mid-epoch and resumed through `train()` ends as the uninterrupted one."
    import json, signal, time
    full = _train_cli(tmp_path/'full'); out_full = full.communicate(timeout=300)[0]
    assert full.returncode == 0, out_full
    p = _train_cli(tmp_path/'cut', env=dict(ALA_TEST_STEP_DELAY='0.05'))
    t = time.time()
    while time.time() - t < 240:                       # until the checkpoint after epoch 1 is on disk
        assert p.poll() is None, p.stdout.read()
        try:
            if torch.load(tmp_path/'cut'/'checkpoint.pt', weights_only=True)['epoch'] >= 1: break
        except Exception: pass
        time.sleep(0.05)
    time.sleep(0.3)                                    # a few steps into epoch 2
    p.send_signal(signal.SIGTERM); text = p.communicate(timeout=120)[0]
    assert p.returncode == 0 and 'preempted (SIGTERM)' in text, text
    st = torch.load(tmp_path/'cut'/'checkpoint.pt', weights_only=True)
    assert st['epoch'] >= 1 and st['step'] > 0, (st['epoch'], st['step'])
    r = _train_cli(tmp_path/'cut', '--resume'); text = r.communicate(timeout=300)[0]
    assert r.returncode == 0, text
    a = torch.load(tmp_path/'full'/'checkpoint.pt', weights_only=True)['model']
    b = torch.load(tmp_path/'cut'/'checkpoint.pt', weights_only=True)['model']
    for k in a: assert torch.equal(a[k], b[k]), f'{k} differs'
    fa, fb = (json.loads((tmp_path/n/'final.json').read_text()) for n in ('full', 'cut'))
    assert fa['top1'] == fb['top1']
