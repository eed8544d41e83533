"""Causal Norm and BBN trained end to end: tiny runs that train and whose saved test outputs equal a re-evaluation by
`ala_eval` (TDE / the 0.5-0.5 branch mix applied both times); Causal Norm's moving-average feature after a training
step; BBN's cumulative α, reversed sampler and mixed loss against independent computations."""
import copy, json, math
import numpy as np, pytest, torch, torch.nn.functional as F

from clitools import run
from ala_nb.methods import METHODS
from ala_nb.config import get_config
from ala_nb.models import create_model, CausalNormClassifier
from ala_nb.data import DeviceLoader, seeded_generator
from ala_nb.step import train_step
from ala_nb.losses import CrossEntropyLoss
from ala_nb.build import make_parts, CAUSAL_NORM_ALPHA
from ala_nb.bbn import NAME, BBNResNetCifar, BBNLoader, ReversedLoader, cumulative_alpha, reversed_class_probs, bbn_loss
from ala_nb.eval import evaluate_run, load_model, split_data, run_config
from ala_nb.build import stratified_subset

CN = 'causal_norm'

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Two tiny real runs through `ala_train`: Causal Norm and BBN."
    d = tmp_path_factory.mktemp('runs')
    for loss in (CN, NAME):
        p = run('ala_train', '--preset', 'fmnist_lt_tiny', '--loss', loss, '--device', 'cpu', '--out', d/loss)
        assert p.returncode == 0, p.stderr[-2000:]
    return {CN: d/CN, NAME: d/NAME}

@pytest.mark.parametrize('loss', [CN, NAME])
def test_trains_and_reevaluates_exactly(runs, loss):
    r = runs[loss]
    fin, saved = json.loads((r/'final.json').read_text()), np.load(r/'test_outputs.npz')
    assert fin['loss'] == loss and fin['model']['head'] == METHODS[loss].head
    m = [json.loads(l) for l in (r/'metrics.jsonl').read_text().splitlines()]
    assert len(m) == 3 and all(math.isfinite(e['train_loss']) for e in m) and m[-1]['train_loss'] < m[0]['train_loss']
    again = evaluate_run(r)
    for k in ('target', 'pred', 'p_true'): assert np.array_equal(again['outputs'][k].cpu().numpy(), saved[k]), k
    p = run('ala_eval', r, '--json')
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert (j['top1'], j['per_class'], j['model']) == (fin['top1'], fin['per_class'], fin['model'])

def test_causal_norm_run_uses_tde(runs):
    "The run's head has the data set's α; its saved predictions are the TDE ones, not the plain logits'."
    r = runs[CN]
    net = load_model(r)
    head = net.linear
    assert isinstance(head, CausalNormClassifier) and head.alpha == CAUSAL_NORM_ALPHA['fmnist_lt'] == 1.
    assert head.embed_mean.abs().sum() > 0
    saved = np.load(r/'test_outputs.npz')
    cfg = run_config(r)
    data, x, y = split_data(cfg)
    sub = stratified_subset(y, cfg.max_test, data.num_classes)
    (xb, _), = DeviceLoader(x[sub], y[sub], len(sub), data.mean, data.std, train=False)
    with torch.no_grad():
        head.use_effect = False; plain_pred = net(xb).argmax(1).numpy()
        head.use_effect = True; tde_pred = net(xb).argmax(1).numpy()
    assert (tde_pred == saved['pred']).all()
    assert (plain_pred != saved['pred']).any()

def test_causal_norm_step_updates_the_feature_average():
    "After one `train_step`, embed_mean = μ·(before) + mean of the batch's features (the features before the step)."
    torch.manual_seed(0)
    net = create_model('resnet8', 5, normed=False, in_chans=1, head=CN)
    head = net.linear
    head.embed_mean.normal_()
    before, ref = head.embed_mean.clone(), copy.deepcopy(net).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 5, (8,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    train_step(net.train(), CrossEntropyLoss(), opt, x, y)
    with torch.no_grad(): feats = ref.features(x)
    torch.testing.assert_close(head.embed_mean, head.mu * before + feats.mean(0), rtol=1e-5, atol=1e-6)
    assert head.mu == 0.9

def test_causal_norm_alpha_from_loss_kw():
    cfg = get_config('fmnist_lt_tiny', loss=CN, loss_kw=dict(alpha=1.5, mu=0.8))
    p = make_parts(cfg, [64, 16, 4], 'cpu')
    assert p.spec['head_kw'] == dict(alpha=1.5, mu=0.8) and (p.model.linear.alpha, p.model.linear.mu) == (1.5, 0.8)
    assert make_parts(get_config('fmnist_lt_tiny', loss=CN), [64, 16, 4], 'cpu').spec['head_kw'] == dict(alpha=1.)
    with pytest.raises(ValueError, match='has its own head'): make_parts(get_config('fmnist_lt_tiny', loss=CN, normed=True), [4, 2], 'cpu')

def test_alpha_schedule():
    for E in (3, 36, 200):
        for e in sorted({0, 1, E // 2, E - 1}):
            assert cumulative_alpha(e, E) == 1 - (e / E) ** 2
    assert [round(cumulative_alpha(e, 4), 10) for e in range(4)] == [1., 0.9375, 0.75, 0.4375]

def test_reversed_sampler_frequencies():
    "Exact on a fixed seed: the draws are torch.multinomial of per-image weights (1/n_c normalised)/n_c; chi-square on the counts."
    counts = [500, 120, 40, 10]
    ys = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    xs = torch.zeros(len(ys), 1, 2, 2, dtype=torch.uint8)
    q = torch.tensor([1 / c for c in counts], dtype=torch.float64); q /= q.sum()
    assert torch.allclose(reversed_class_probs(counts), q, rtol=0, atol=1e-15)
    rl = ReversedLoader(xs, ys, 50, (0.,), (1.,), pad=0)
    w = torch.cat([torch.full((c,), float(q[k] / c)) for k, c in enumerate(counts)]).double()
    h = torch.zeros(len(counts), dtype=torch.float64)
    for e in range(40):
        rl.set_epoch(e)
        idx = rl.plan()[0]
        assert torch.equal(idx, torch.multinomial(w, len(ys), replacement=True, generator=seeded_generator(0, e, 0, 2)))
        h += torch.bincount(ys[idx], minlength=len(counts)).double()
    chi2 = float(((h - h.sum() * q) ** 2 / (h.sum() * q)).sum())
    assert chi2 < 16.27, chi2                     # 3 degrees of freedom, 0.1%

def test_mixed_loss_and_step():
    torch.manual_seed(0)
    logits, y_c, y_r = torch.randn(6, 4), torch.randint(0, 4, (6,)), torch.randint(0, 4, (6,))
    a = 0.3
    lp = logits.log_softmax(1)
    want = -(a * lp[torch.arange(6), y_c].mean() + (1 - a) * lp[torch.arange(6), y_r].mean())
    torch.testing.assert_close(bbn_loss(logits, y_c, y_r, a, CrossEntropyLoss()), want)
    ys = torch.arange(4).repeat_interleave(torch.tensor([20, 8, 3, 1]))
    xs = torch.randint(0, 256, (len(ys), 1, 8, 8), dtype=torch.uint8)
    bl = BBNLoader(DeviceLoader(xs, ys, 8, (0.5,), (0.25,)), ReversedLoader(xs, ys, 8, (0.5,), (0.25,)), epochs=5)
    bl.set_epoch(3)
    assert bl.alpha == 1 - (3 / 5) ** 2
    x, y = next(iter(bl))
    net = BBNResNetCifar(8, 4, in_chans=1); ref = copy.deepcopy(net)
    loss = bl.step(net, CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1), x, y)
    f_c, f_r = ref.branches(x[:8], x[8:])
    W, b = ref.linear.weight, ref.linear.bias
    out = 2 * bl.alpha * f_c @ W[:, :64].T + 2 * (1 - bl.alpha) * f_r @ W[:, 64:].T + b
    torch.testing.assert_close(loss, bl.alpha * F.cross_entropy(out, y[:8]) + (1 - bl.alpha) * F.cross_entropy(out, y[8:]))

def test_bbn_refusals():
    with pytest.raises(ValueError, match="arch 'resnet50': BBN is built here for resnet8, resnet20, resnet32 only"):
        make_parts(get_config('fmnist_lt_tiny', loss=NAME, arch='resnet50'), [4, 2], 'cpu')
    p = run('ala_train', '--preset', 'fmnist_lt_tiny', '--loss', NAME, '--sampler', 'balanced', '--device', 'cpu', '--out', '/tmp/never_bbn_x')
    assert p.returncode == 2 and "sampler 'balanced': BBN's conventional branch" in p.stderr, p.stderr[-1000:]
