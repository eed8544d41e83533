"""File-system and command-line tests of ala_nb.cache: caches of the real split files' paths with stand-in JPEGs,
every damaged input, atomic builds, and `ala_cache` run as a user runs it. nbs/05a_cache.ipynb holds the rest."""
import hashlib, json, os, shutil
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
import ala_nb
import ala_nb.cache as K
from ala_nb.testing import write_standin_split
from ala_nb.data import SplitFileDataset
from clitools import run, SPLITS, needs_splits

pytestmark = pytest.mark.filterwarnings('ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning')



def _standin(root, rel, hw, seed):
    "A small smooth JPEG of (rows, cols) `hw` at root/rel."
    g = np.random.default_rng(seed)
    h, w = hw
    low = g.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BILINEAR)
    (root/rel).parent.mkdir(parents=True, exist_ok=True)
    im.save(root/rel, quality=92)


def _real_subset(tmp_path, name='Places_LT_train.txt', stride=997, start=0):
    "Every `stride`-th line of a real split file, kept under its real name, with stand-in images of varied shapes."
    lines = (SPLITS/name).read_text().splitlines()[start::stride]
    sd, root = tmp_path/'splits', tmp_path/'images'
    sd.mkdir(exist_ok=True)
    (sd/name).write_text('\n'.join(lines) + '\n')
    shapes = [(30, 40), (40, 30), (25, 25), (20, 70), (70, 20), (33, 47)]
    for i, l in enumerate(lines): _standin(root, l.split()[0], shapes[i % len(shapes)], i)
    return root, sd/name, lines


def _cli(*args, **kw): return run('ala_cache', *map(str, args), timeout=kw.get('timeout', 180))

def _one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('ala_cache: error: '), p.stderr
    for n in needles: assert n in lines[0], (n, lines[0])
    assert 'Traceback' not in p.stderr


# ------------------------------------------------------------------ building from the real lists
@needs_splits
def test_real_split_roundtrip(tmp_path):
    root, split, lines = _real_subset(tmp_path)
    out = K.build_cache(root, split, tmp_path/'cache', size=24, workers=2, progress=False)
    assert out == tmp_path/'cache/Places_LT_train'
    man = json.loads((out/'manifest.json').read_text())
    ds = SplitFileDataset(root, split, 365)
    assert man['split_file'] == 'Places_LT_train.txt' and man['num_classes'] == 365
    assert man['split_sha256'] == hashlib.sha256(split.read_bytes()).hexdigest()
    assert man['num_images'] == len(lines) == len(ds) and man['counts'] == ds.counts and man['size'] == 24
    assert man['slot'] == [24, 32] and man['long_side_cropped'] > 0                    # int(24 · 4/3) = 32
    c = K.open_cache(out, split)
    assert c.labels.tolist() == [int(l.split()[1]) for l in lines]
    for i in range(len(c)):                                                           # pixels: PIL's own resize, within JPEG noise
        with Image.open(root/ds.paths[i]) as im: w, h = im.size; pil = im.convert('RGB')
        rh, rw = K.resized_size(h, w, 24)
        ref = torch.from_numpy(np.array(pil.resize((rw, rh), Image.BILINEAR))).permute(2, 0, 1)
        top, left = int(round((rh - c.hw[i, 0].item()) / 2)), int(round((rw - c.hw[i, 1].item()) / 2))
        ref = ref[:, top:top + c.hw[i, 0], left:left + c.hw[i, 1]]
        d = (c.image(i).float() - ref.float()).abs()
        assert d.mean() < 1.0 and d.max() <= 6, (i, float(d.mean()), float(d.max()))


@needs_splits
def test_threads_give_the_same_cache(tmp_path):
    root, split, _ = _real_subset(tmp_path, stride=3001)
    a = K.build_cache(root, split, tmp_path/'a', size=20, workers=1, progress=False)
    b = K.build_cache(root, split, tmp_path/'b', size=20, workers=3, progress=False)
    for f in ('images.npy', 'labels.npy', 'meta.npy'): assert (a/f).read_bytes() == (b/f).read_bytes(), f


@needs_splits
def test_cached_lt_data_matches_split_files(tmp_path):
    root, tr, _ = _real_subset(tmp_path, 'Places_LT_train.txt', stride=2503)
    _, te, te_lines = _real_subset(tmp_path, 'Places_LT_test.txt', stride=1499)
    for s in (tr, te): K.build_cache(root, s, tmp_path/'cache', size=16, workers=2, progress=False)
    d = K.cached_lt_data('places_lt', tmp_path/'cache', tr.parent)
    ds = SplitFileDataset(root, tr, 365)
    assert d.counts == ds.counts and d.classes == ds.classes and d.num_classes == 365
    assert d.test_targets.tolist() == [int(l.split()[1]) for l in te_lines]
    assert (d.image_size, d.in_chans, d.train_x) == (224, 3, None)
    # the split file changes after the cache was built: refused in one line, naming both
    tr.write_text(tr.read_text() + 'train/zoo/extra.jpg 0\n')
    with pytest.raises(K.CacheError) as e: K.cached_lt_data('places_lt', tmp_path/'cache', tr.parent)
    msg = str(e.value)
    assert '\n' not in msg and 'Places_LT_train' in msg and 'sha256' in msg and 'rebuild' in msg


# ------------------------------------------------------------------ damaged caches are refused
def _tiny(tmp_path, n=4):
    root = tmp_path/'img'
    split = write_standin_split(root, tmp_path/'tiny.txt', [(20, 30)] * n, list(range(n)))
    return root, split, K.build_cache(root, split, tmp_path/'cache', num_classes=n, size=16, workers=1, progress=False)

def _edit_manifest(d, drop_sha=False, **fields):
    "Change `fields` of the cache's manifest (and drop the digests of labels.npy and meta.npy, as caches of before had none)."
    m = json.loads((d/'manifest.json').read_text()); m.update(fields)
    if drop_sha: [m['files'][k].pop('sha256', None) for k in ('labels', 'meta')]
    (d/'manifest.json').write_text(json.dumps(m))

@pytest.mark.parametrize('damage, msg', [
    (lambda d: (d/'images.npy').write_bytes((d/'images.npy').read_bytes()[:-100]), 'images.npy: unreadable'),
    (lambda d: np.save(d/'labels.npy', np.zeros(3, np.int64)), 'labels.npy: int64 [3], the manifest says int64 [4]'),
    (lambda d: (d/'manifest.json').write_text('{'), 'manifest.json: not valid JSON'),
    (lambda d: (d/'manifest.json').write_text('{"format": "other/9"}'), "format 'other/9', expected 'ala_nb.cache/1'"),
    (lambda d: (d/'manifest.json').unlink(), 'not a cache (no manifest.json)'),
    (lambda d: (d/'manifest.json').write_text('{"format": "ala_nb.cache/1", "size": 16, "files": {}}'),
     'incomplete manifest (no split_file, split_sha256, num_classes, counts, slot, files.images, files.labels, files.meta)'),
    # issue 17: the cache is held to what made it (the split file's labels, the counts they give, the recorded digests)
    (lambda d: _edit_manifest(d, counts=[1, 1, 2, 0]), 'manifest.json: counts[2] = 2, but labels.npy holds 1 images of class 2'),
    (lambda d: _edit_manifest(d, num_images=5), 'manifest.json: num_images 5, but labels.npy holds 4'),
    (lambda d: _edit_manifest(d, num_classes=3), 'manifest.json: num_classes 3 does not fit'),
    (lambda d: np.save(d/'labels.npy', np.array([0, 1, 3, 3])), 'labels.npy: sha256 '),
    (lambda d: (np.save(d/'labels.npy', np.array([0, 1, 3, 3])), _edit_manifest(d, drop_sha=True)),
     "labels.npy: label 3 for image 2 (img/2/2.jpg), but "),
    (lambda d: np.save(d/'meta.npy', np.load(d/'meta.npy') + 1), 'meta.npy: sha256 '),
])
def test_damaged_cache_refused(tmp_path, damage, msg):
    _, split, d = _tiny(tmp_path)
    damage(d)
    with pytest.raises(K.CacheError, match=None) as e: K.open_cache(d, split)
    assert msg in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_failed_build_leaves_nothing_and_keeps_old_cache(tmp_path, monkeypatch):
    root, split, d = _tiny(tmp_path)
    before = {f: (d/f).read_bytes() for f in os.listdir(d)}
    real, calls = K.store_image, []
    def boom(*a):
        calls.append(1)
        if len(calls) == 3: raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(K, 'store_image', boom)
    with pytest.raises(KeyboardInterrupt):
        K.build_cache(root, split, tmp_path/'cache', num_classes=4, size=16, workers=1, overwrite=True, progress=False)
    assert os.listdir(tmp_path/'cache') == ['tiny']                                    # no partial or old folder
    assert {f: (d/f).read_bytes() for f in os.listdir(d)} == before
    monkeypatch.setattr(K, 'store_image', real)
    K.build_cache(root, split, tmp_path/'cache', num_classes=4, size=12, workers=1, overwrite=True, progress=False)
    assert json.loads((d/'manifest.json').read_text())['size'] == 12 and os.listdir(tmp_path/'cache') == ['tiny']


# ------------------------------------------------------------------ ala_cache from the shell
@needs_splits
def test_cli_builds_and_refuses_to_overwrite(tmp_path):
    root, split, lines = _real_subset(tmp_path, stride=4999)
    p = _cli(root, split, tmp_path/'cache', '--size', 16, '--workers', 2)
    assert p.returncode == 0, p.stderr
    out = tmp_path/'cache/Places_LT_train'
    assert f"{out}: {len(lines)} images of 365 classes in 3×16×21 slots" in p.stdout, p.stdout
    before = (out/'images.npy').read_bytes()
    _one_line_error(_cli(root, split, tmp_path/'cache', '--size', 16), f'{out} exists', '--overwrite')
    assert (out/'images.npy').read_bytes() == before
    p = _cli(root, split, tmp_path/'cache', '--size', 12, '--overwrite')
    assert p.returncode == 0, p.stderr
    assert K.open_cache(out, split).size == 12 and sorted(os.listdir(tmp_path/'cache')) == ['Places_LT_train']


@needs_splits
@pytest.mark.parametrize('kind', ['missing', 'junk', 'truncated', 'empty'])
def test_bad_image_named(tmp_path, kind):
    root, split, lines = _real_subset(tmp_path, stride=4999)
    k = 3
    rel = lines[k].split()[0]
    img = root/rel
    if kind == 'missing': img.unlink()
    elif kind == 'junk': img.write_bytes(b'\x89PNG not really')
    elif kind == 'empty': img.write_bytes(b'')
    else:
        _standin(root, rel, (300, 400), 0); img.write_bytes(img.read_bytes()[:len(img.read_bytes()) // 2])
    why = {'missing': 'image not found', 'junk': 'not a readable image', 'empty': 'not a readable image',
           'truncated': 'cannot decode (Image is incomplete or truncated)'}[kind]
    needles = f'{img}: {why}', f'(listed at {split}:{k + 1})'
    if kind == 'truncated': _one_line_error(_cli(root, split, tmp_path/'cache', '--size', 16, '--workers', 2), *needles)
    else:
        with pytest.raises(K.CacheError) as e: K.build_cache(root, split, tmp_path/'cache', size=16, workers=2, progress=False)
        assert all(n in str(e.value) for n in needles) and '\n' not in str(e.value), str(e.value)
    assert not (tmp_path/'cache').exists() or os.listdir(tmp_path/'cache') == []


def test_cli_counts_every_bad_image(tmp_path):
    root = tmp_path/'img'
    split = write_standin_split(root, tmp_path/'s.txt', [(20, 20)] * 9, [0] * 9)
    for i in (2, 5, 7): (root/f'img/0/{i}.jpg').unlink()
    _one_line_error(_cli(root, split, tmp_path/'c', '--num_classes', 1), f'{root}/img/0/2.jpg: image not found',
                    f'(listed at {split}:3); 3 bad images in all, the others at lines 6, 8')


@pytest.mark.parametrize('setup, kw, needles', [
    ('label', dict(num_classes=2), ('s.txt:2: label 7 out of range for 2 classes',)),
    ('line', dict(num_classes=9), ("s.txt:1: expected 'relative/path label'",)),
    ('name', dict(), ('not a split file of imagenet_lt, places_lt, inat2018', 'give num_classes')),
    ('root', dict(num_classes=9), ('no such image folder',)),
    ('split', dict(num_classes=9), ('nosuch.txt: no such split file',)),
    ('aspect', dict(num_classes=9, max_aspect=0.9), ('max_aspect must be >= 1',)),
])
def test_bad_input_one_line(tmp_path, setup, kw, needles):
    "Through the console script for two of them (exit 2, one line), through build_cache for the rest."
    root = tmp_path/'img'
    split = write_standin_split(root, tmp_path/'s.txt', [(20, 20)] * 2, [0, 7])
    if setup == 'line': split.write_text('img/0/0.jpg\n')
    if setup == 'root': root = tmp_path/'nowhere'
    if setup == 'split': split = tmp_path/'nosuch.txt'
    if setup in ('label', 'name'):
        _one_line_error(_cli(root, split, tmp_path/'c', *[a for k, v in kw.items() for a in (f'--{k}', v)]), *needles)
    else:
        with pytest.raises((ValueError, FileNotFoundError)) as e: K.build_cache(root, split, tmp_path/'c', **kw)
        assert all(n in str(e.value) for n in needles) and '\n' not in str(e.value), str(e.value)
    assert not (tmp_path/'c').exists()


def test_cli_size_and_workers_one_line(tmp_path):
    "A size that cannot fit is refused before anything is written, saying what it needs; --workers is named as a flag."
    root = tmp_path/'img'
    split = write_standin_split(root, tmp_path/'s.txt', [(20, 20)] * 2, [0, 0])
    _one_line_error(_cli(root, split, tmp_path/'c', '--num_classes', 1, '--size', 100000),
                    'size 100000: the cache of 2 images in 3×100000×100000 slots needs', 'GiB', '--size')
    _one_line_error(_cli(root, split, tmp_path/'c', '--num_classes', 1, '--workers', -1), '--workers must be an integer >= 1')
    _one_line_error(_cli(root, split, tmp_path/'c', '--num_classes', 1, '--workers', 0), '--workers must be an integer >= 1')
    _one_line_error(_cli(root, split, tmp_path/'c', '--num_classes', 1, '--size', 0), '--size must be an integer >= 1; got 0')
    assert not (tmp_path/'c').exists()
    with pytest.raises(ValueError, match='workers [(]--workers[)] must be an integer >= 1'):
        K.build_cache(root, split, tmp_path/'c', num_classes=1, workers=-1)
    assert not (tmp_path/'c').exists()


def test_cli_help():
    p = run('ala_cache', '--help', timeout=120)
    assert p.returncode == 0 and '--max_aspect' in p.stdout and '--overwrite' in p.stdout, p.stdout + p.stderr


# ------------------------------------------------------------------ the loader is a pure function of (seed, epoch, rank)
def test_loader_reproducible_across_opens(tmp_path):
    root = tmp_path/'img'
    split = write_standin_split(root, tmp_path/'s.txt', [(30, 40), (40, 30), (24, 24), (20, 50)] * 3, [0, 1, 2] * 4)
    d = K.build_cache(root, split, tmp_path/'c', num_classes=3, size=24, workers=2, progress=False)
    def batches(rank):
        ld = K.CacheLoader(K.open_cache(d, split), 2, out_size=20, rank=rank, world_size=2, seed=7)
        ld.set_epoch(3)
        return [(x.clone(), y.clone()) for x, y in ld]
    a, b = batches(1), batches(1)
    assert len(a) == 3 and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    c = batches(0)
    assert not torch.equal(torch.cat([x for x, _ in a]), torch.cat([x for x, _ in c]))
