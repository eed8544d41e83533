"""Training from an `ala_cache` cache (`--data_cache DIR`), on the CPU: tiny ImageNet-LT-named split files with
stand-in JPEGs, cached at S = 32; the run's loaders are `CacheLoader`s (training: sharded, augmented on the device;
evaluation: the test split in order), one epoch of ResNet-8 trains and evaluates, and two processes (gloo) shard
the cache as `DeviceLoader` shards the small sets — disjoint halves, one set of weights. Bad combinations are
refused in one line."""
import json, os
from pathlib import Path
import numpy as np, pytest, torch
from ala_nb.cache import CacheLoader, build_cache
from ala_nb.testing import write_standin_split
from ala_nb.config import get_config
from ala_nb.build import build_run
from ala_nb.evaluate import evaluate
from ala_nb.train import train
from clitools import ROOT, ENV, run, script
import subprocess, sys

pytestmark = pytest.mark.filterwarnings('ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning')
TRAIN_LABELS, TEST_LABELS = [0, 0, 0, 1, 1, 2, 3, 999], [0, 1, 2, 999]

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "Split files under ImageNet-LT's names, stand-in JPEGs of mixed shapes, both splits cached at S = 32."
    d = tmp_path_factory.mktemp('cached')
    sd, root = d/'splits', d/'images'
    write_standin_split(root/'train', sd/'ImageNet_LT_train.txt', [(30, 40), (40, 30), (24, 24), (20, 50)] * 2, TRAIN_LABELS, workers=1)
    write_standin_split(root/'test', sd/'ImageNet_LT_test.txt', [(36, 48)] * 4, TEST_LABELS, seed=1, workers=1)
    for f in ('train', 'test'):                         # the split files' paths are relative to root
        p = sd/f'ImageNet_LT_{f}.txt'; p.write_text(p.read_text().replace('img/', f'{f}/img/'))
        build_cache(root, p, d/'cache', size=32, workers=1, progress=False)
    return dict(root=root, split_dir=sd, cache=d/'cache')

def cfg(c, **kw):
    return get_config('imagenet_lt_r50', arch='resnet8', root=str(c['root']), split_dir=str(c['split_dir']),
                      data_cache=str(c['cache']), epochs=1, batch_size=4, eval_batch_size=3, device='cpu', threads=1, loss='ce',
                      num_workers=0, **kw)

def test_loaders_come_from_the_cache(cache):
    r = build_run(cfg(cache))
    assert isinstance(r.train_loader, CacheLoader) and r.train_sampler is None and r.cstep is None
    assert (r.train_loader.rank, r.train_loader.world_size, r.train_loader.train, r.train_loader.batch_size) == (0, 1, True, 4)
    assert r.counts[:4] == [3, 2, 1, 1] and r.counts[999] == 1 and len(r.counts) == 1000 and r.steps_per_epoch == 2
    x, y = next(iter(r.train_loader))
    assert x.shape == (4, 3, 224, 224) and x.is_contiguous(memory_format=torch.channels_last)
    ev = r.eval_loaders['final']
    assert isinstance(ev, CacheLoader) and not ev.train and r.eval_n['final'] == 4
    o = evaluate(r.net, ev, r.device, r.logit_scale)
    assert o['target'].tolist() == TEST_LABELS                           # the test split, in its order
    assert build_run(cfg(cache, sampler='balanced')).train_loader.sampler is not None   # class-aware draws, from the cache

def test_one_epoch_from_the_cache(cache, tmp_path):
    res = train(cfg(cache, out=str(tmp_path/'run')))
    assert res['epochs'] == 1 and res['dataset'] == 'imagenet_lt' and len(res['per_class']) == 1000
    z = np.load(tmp_path/'run/test_outputs.npz')
    assert z['target'].tolist() == TEST_LABELS and np.isfinite(z['p_true']).all()
    assert res['top1']['all'] == pytest.approx(float(np.mean([z['pred'][z['target'] == c] == c for c in set(TEST_LABELS)])))
    m = [json.loads(l) for l in (tmp_path/'run/metrics.jsonl').read_text().splitlines()]
    assert len(m) == 1 and np.isfinite(m[0]['train_loss'])

def test_two_ranks_shard_the_cache(cache, tmp_path):
    "torchrun, 2 gloo processes: each rank trains on its half (DistributedSampler's convention); the same weights on both."
    out = tmp_path/'run'
    c = {k: str(v) for k, v in cache.items()}
    extra = json.dumps(dict(data_cache=c['cache'], split_dir=c['split_dir'], pretrained=None, num_workers=0,
                            eval_batch_size=3))
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        script('ala_train'), '--preset', 'imagenet_lt_r50', '--arch', 'resnet8', '--data_root', c['root'],
                        '--epochs', '1', '--batch_size', '4', '--device', 'cpu', '--threads', '1', '--loss', 'ce', '--out', str(out),
                        '--cfg', extra], capture_output=True, text=True, timeout=400, cwd=ROOT, env=dict(ENV, ALA_TEST_RANK_DUMP='1'))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    h = [json.loads((out/f'rank{r}.json').read_text())['sha256'] for r in (0, 1)]
    assert h[0] == h[1]
    assert json.loads((out/'final.json').read_text())['world_size'] == 2
    assert np.load(out/'test_outputs.npz')['target'].tolist() == TEST_LABELS   # sharded evaluation, gathered in order

def test_build_run_shards_the_cache_by_rank(cache, monkeypatch):
    "build_run hands its rank and world size to the cache's loaders: rank r trains on rows order[r::2], evaluates test[r::2]."
    import ala_nb.build as T
    monkeypatch.setattr(T, 'DDP', lambda net, device_ids=None: net)  # no process group here: only the loaders matter
    rows, ev = [], []
    for r in (0, 1):
        monkeypatch.setattr(T, 'dist_info', lambda r=r: (r, 2, 0))
        run_ = T.build_run(cfg(cache))
        assert (run_.train_loader.rank, run_.train_loader.world_size, run_.train_loader.batch_size) == (r, 2, 2)
        run_.train_loader.set_epoch(0); rows.append(run_.train_loader.plan()['rows_cpu'].tolist())
        ev.append(run_.eval_loaders['final'].rows.tolist())
    assert sorted(rows[0] + rows[1]) == list(range(8)) and not set(rows[0]) & set(rows[1])   # disjoint halves
    assert ev == [[0, 2], [1, 3]]

@pytest.mark.parametrize('kw, msg', [(dict(step='captured'), 'imagenet_lt streams from its split files'),
                                     (dict(dataset='fmnist_lt'), 'data_cache applies only to imagenet_lt')])
def test_refused(cache, kw, msg):
    with pytest.raises(ValueError, match=msg): build_run(cfg(cache, **kw))

def test_cli_names_a_missing_cache(cache, tmp_path):
    p = run('ala_train', '--preset', 'imagenet_lt_r50', '--arch', 'resnet8', '--loss', 'ce', '--data_root', cache['root'], '--device', 'cpu',
            '--out', tmp_path/'run', '--cfg', json.dumps(dict(data_cache=str(tmp_path/'nocache'), split_dir=str(cache['split_dir']),
                                                               pretrained=None)), timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert 'no cache of ImageNet_LT_train.txt' in p.stderr and not (tmp_path/'run').exists()
