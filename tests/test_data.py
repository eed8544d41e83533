"""File-system heavy tests of ala_nb.data: CIFAR folders in torchvision's format, the real split files with
stand-in images, every place Fashion-MNIST may be found, and every damaged input. nbs/02_data.ipynb holds the rest."""
import collections, gzip, os, pickle, shutil
from pathlib import Path
import numpy as np, pytest, torch, torchvision
from PIL import Image
import ala_nb
import ala_nb.data as D
from clitools import SPLITS, needs_splits




def _groups(counter, C):
    n = [counter[c] for c in range(C)]
    return dict(many=sum(v > 100 for v in n), medium=sum(20 <= v <= 100 for v in n), few=sum(v < 20 for v in n))


def _jpeg(path, color=(10, 120, 230), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, color).save(path)


# ---------------------------------------------------------------- CIFAR through torchvision's reading code
def _md5_free(cls):
    "torchvision's class with md5=None in its file lists: `check_integrity(path, None)` then checks existence only."
    return type('ExistsOnly' + cls.__name__, (cls,), dict(
        train_list=[[f, None] for f, _ in cls.train_list], test_list=[[f, None] for f, _ in cls.test_list],
        meta={**cls.meta, 'md5': None}))


def _write_cifar(root, cls, per_class, test_per_class, seed=0):
    "A tiny folder in the format of torchvision's CIFAR10/CIFAR100; returns (train_x (N,3,32,32), train_y)."
    g = np.random.default_rng(seed)
    C = 10 if cls is torchvision.datasets.CIFAR10 else 100
    d = Path(root)/cls.base_folder; d.mkdir(parents=True)
    y = g.permutation(np.repeat(np.arange(C), per_class)); x = g.integers(0, 256, (len(y), 3072), dtype=np.uint8)
    key = 'labels' if C == 10 else 'fine_labels'
    parts = np.array_split(np.arange(len(y)), len(cls.train_list))
    for (f, _), part in zip(cls.train_list, parts):
        with open(d/f, 'wb') as fh: pickle.dump({'data': x[part], key: y[part].tolist()}, fh)
    ty = np.repeat(np.arange(C), test_per_class)
    with open(d/cls.test_list[0][0], 'wb') as fh:
        pickle.dump({'data': g.integers(0, 256, (len(ty), 3072), dtype=np.uint8), key: ty.tolist()}, fh)
    with open(d/cls.meta['filename'], 'wb') as fh: pickle.dump({cls.meta['key']: [f'class{i}' for i in range(C)]}, fh)
    return x.reshape(-1, 3, 32, 32), y


@pytest.mark.parametrize('name,cls,n_max,imb', [('cifar10_lt', torchvision.datasets.CIFAR10, 8, 4),
                                                 ('cifar100_lt', torchvision.datasets.CIFAR100, 5, 5)])
def test_cifar_lt(tmp_path, monkeypatch, name, cls, n_max, imb):
    x, y = _write_cifar(tmp_path, cls, per_class=n_max, test_per_class=2)
    with pytest.raises(FileNotFoundError, match='no readable'):   # the real md5 check refuses hand-made files
        D.get_lt_data(name, root=tmp_path, n_max=n_max, imb_factor=imb)
    monkeypatch.setitem(D.CIFAR_DATASETS, name, _md5_free(cls))
    d = D.get_lt_data(name, root=tmp_path, n_max=n_max, imb_factor=imb, seed=3)
    C = d.num_classes
    assert C == (10 if name == 'cifar10_lt' else 100) and d.counts == D.lt_counts(n_max, C, imb)
    assert torch.bincount(d.train_targets, minlength=C).tolist() == d.counts
    keep = D.lt_indices(y, d.counts, seed=3)
    assert torch.equal(d.train_x, torch.from_numpy(x[keep])) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (2 * C, 3, 32, 32) and torch.bincount(d.test_targets).tolist() == [2] * C
    assert d.classes[:2] == ['class0', 'class1'] and (d.in_chans, d.image_size, d.mean) == (3, 32, D.CIFAR_MEAN)
    img, label = d.train[0]
    assert img.shape == (3, 32, 32) and label == int(d.train_targets[0])
    # ALA_DATA is the default root
    monkeypatch.setenv('ALA_DATA', str(tmp_path))
    assert D.get_lt_data(name, n_max=n_max, imb_factor=imb, seed=3).counts == d.counts


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'cifar10_lt: no readable .*cifar-10-batches-py.*download=True'):
        D.get_lt_data('cifar10_lt', root=tmp_path)


# ---------------------------------------------------------------- the real split files
@needs_splits
def test_places_lt_real_split(tmp_path):
    counter = collections.Counter(int(l.split()[1]) for l in open(SPLITS/'Places_LT_train.txt') if l.strip())
    root = tmp_path/'places365'
    d = D.get_lt_data('places_lt', root=root, split_dir=SPLITS)
    assert d.num_classes == 365 and len(d.counts) == 365
    assert (max(d.counts), min(d.counts), sum(d.counts)) == (4980, 5, 62500)
    assert d.counts == [counter[c] for c in range(365)]
    groups = D.shot_groups(d.counts)
    assert {k: len(v) for k, v in groups.items()} == _groups(counter, 365)
    assert sorted(groups['many'] + groups['medium'] + groups['few']) == list(range(365))
    assert torch.bincount(d.test_targets).tolist() == [100] * 365 and len(d.test) == 36500
    assert d.train_x is None and d.test_x is None and (d.in_chans, d.image_size) == (3, 224)
    # stand-in images at a few of the listed paths
    for i in (0, 5000, 62499): _jpeg(root/d.train.paths[i])
    _jpeg(root/d.test.paths[7], size=(300, 280))
    for i in (0, 5000, 62499):
        img, label = d.train[i]
        assert img.shape == (3, 224, 224) and img.dtype == torch.float32 and label == int(d.train_targets[i])
    img, label = d.test[7]
    assert img.shape == (3, 224, 224) and label == int(d.test_targets[7])
    with pytest.raises(FileNotFoundError, match=f'{d.train.paths[1]}: image not found'): d.train[1]
    with pytest.raises(FileNotFoundError, match=r'image not found \(listed at .*Places_LT_train.txt:2\)'):
        D.get_lt_data('places_lt', root=root, split_dir=SPLITS, check_files=True)


@needs_splits
def test_imagenet_lt_and_inat_real_lists(tmp_path):
    # the ImageNet-LT and iNaturalist training lists are too large to ship: their balanced val lists stand in
    # for the training list here, which exercises the same reading code on real lines
    for val, train in [('ImageNet_LT_val.txt', 'ImageNet_LT_train.txt'), ('iNaturalist18_val.txt', 'iNaturalist18_train.txt')]:
        shutil.copy(SPLITS/val, tmp_path/train)
    shutil.copy(SPLITS/'ImageNet_LT_test.txt', tmp_path)
    shutil.copy(SPLITS/'iNaturalist18_val.txt', tmp_path)
    inet = D.get_lt_data('imagenet_lt', root=tmp_path/'imgs', split_dir=tmp_path)
    assert inet.counts == [20] * 1000 and torch.bincount(inet.test_targets).tolist() == [50] * 1000
    assert {k: len(v) for k, v in D.shot_groups(inet.counts).items()} == dict(many=0, medium=1000, few=0)
    assert inet.classes[0] == 'n01440764' and len(set(inet.classes)) == 1000
    inat = D.get_lt_data('inat2018', root=tmp_path/'imgs', split_dir=tmp_path)
    counter = collections.Counter(int(l.split()[1]) for l in open(SPLITS/'iNaturalist18_val.txt') if l.strip())
    assert inat.num_classes == 8142 and inat.counts == [counter[c] for c in range(8142)] == [3] * 8142
    assert {k: len(v) for k, v in D.shot_groups(inat.counts).items()} == dict(many=0, medium=0, few=8142)
    first = open(SPLITS/'iNaturalist18_val.txt').readline().split()
    assert inat.classes[int(first[1])] == '/'.join(first[0].split('/')[1:-1])    # e.g. Plantae/7291
    _jpeg(tmp_path/'imgs'/first[0])
    assert inat.test[0][0].shape == (3, 224, 224) and inat.test[0][1] == int(first[1])
    with pytest.raises(FileNotFoundError, match='iNaturalist18_train.txt'):
        D.get_lt_data('inat2018', root=tmp_path, split_dir=tmp_path/'elsewhere')


# ---------------------------------------------------------------- split-file errors
@pytest.mark.parametrize('text,msg', [
    ('a.jpg 0\nb.jpg 1000\n', r'ImageNet_LT_train.txt:2: label 1000 out of range for 1000 classes'),
    ('a.jpg 0\nb.jpg -3\n', r'ImageNet_LT_train.txt:2: label -3 out of range for 1000 classes'),
    ('a.jpg 0\n\nb.jpg\n', r"ImageNet_LT_train.txt:3: expected 'relative/path label', got 'b.jpg'"),
    ('a.jpg zero\n', r"ImageNet_LT_train.txt:1: expected 'relative/path label'"),
    ('a.jpg 0 extra\n', r"ImageNet_LT_train.txt:1: expected 'relative/path label'"),
    ('a.jpg 0\nb.jpg 1\na.jpg 1\n', r'ImageNet_LT_train.txt:3: duplicate path a.jpg \(first at line 1\)'),
    ('', r'ImageNet_LT_train.txt: no images listed'),
])
def test_split_file_errors(tmp_path, text, msg):
    (tmp_path/'ImageNet_LT_train.txt').write_text(text)
    with pytest.raises(ValueError, match=msg): D.SplitFileDataset(tmp_path, tmp_path/'ImageNet_LT_train.txt', 1000)


def test_split_file_missing_image_both_modes(tmp_path):
    _jpeg(tmp_path/'train/a/1.jpg')
    sf = tmp_path/'list.txt'; sf.write_text('train/a/1.jpg 0\ntrain/b/2.jpg 1\ntrain/b/3.jpg 1\n')
    missing = str(tmp_path/'train/b/2.jpg')
    with pytest.raises(FileNotFoundError, match=rf'{missing}: image not found \(listed at .*list.txt:2\) \(2 of 3'):
        D.SplitFileDataset(tmp_path, sf, 2, check_files=True)
    ds = D.SplitFileDataset(tmp_path, sf, 2)
    assert ds[0][1] == 0 and ds.counts == [1, 2] and ds.classes == ['a', 'b']
    with pytest.raises(FileNotFoundError, match=rf'{missing}: image not found'): ds[1]


def test_bad_arguments():
    with pytest.raises(ValueError, match='imb_factor must be a number >= 1'): D.lt_counts(100, 10, 0.5)
    with pytest.raises(ValueError, match='imb_factor must be a number >= 1'): D.get_lt_data('cifar10_lt', imb_factor=0)
    with pytest.raises(ValueError, match='imb_factor must be a number >= 1'): D.lt_counts(100, 10, -10)
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; choose from fmnist_lt, cifar10_lt"): D.get_lt_data('imagenet')
    with pytest.raises(ValueError, match='class 1 has 2 images, but 3 were asked for'): D.lt_indices([0, 0, 0, 1, 1], [3, 3])


# ---------------------------------------------------------------- Fashion-MNIST: where it is found, and damage
def _write_idx(path, a, gz=True):
    b = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, '>u4').tobytes() + a.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz: Path(str(path) + '.gz').write_bytes(gzip.compress(b))
    else: path.write_bytes(b)


def _write_fmnist(d, n_train=40, n_test=20, gz=True, seed=0):
    g = np.random.default_rng(seed)
    arrays = dict(train_x=g.integers(0, 256, (n_train, 28, 28)), train_y=np.arange(n_train) % 10,
                  test_x=g.integers(0, 256, (n_test, 28, 28)), test_y=np.arange(n_test) % 10)
    for k, f in D.FMNIST_FILES.items(): _write_idx(Path(d)/f, arrays[k], gz)
    return arrays


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    "Every default place (Debian path, ALA_DATA, user cache) points at an empty folder."
    places = {k: tmp_path/k for k in ('system', 'ala_data', 'xdg')}
    for p in places.values(): p.mkdir()
    monkeypatch.setattr(D, 'FMNIST_SYSTEM_DIRS', [str(places['system'])])
    monkeypatch.setenv('ALA_DATA', str(places['ala_data'])); monkeypatch.setenv('XDG_CACHE_HOME', str(places['xdg']))
    return places


def test_fmnist_missing_names_every_place(tmp_path, nowhere):
    with pytest.raises(FileNotFoundError) as e: D.get_lt_data('fmnist_lt')
    msg = str(e.value)
    for place in (f"ALA_DATA: {nowhere['ala_data']}", f"system: {nowhere['system']}",
                  f"cache: {nowhere['xdg']/'ala_nb/fashion-mnist'}", 'sudo apt-get install dataset-fashion-mnist',
                  'train-images-idx3-ubyte[.gz]', 'FashionMNIST/raw'):
        assert place in msg, (place, msg)
    assert msg.count('Fashion-MNIST not found') == 1


def test_fmnist_explicit_root_is_the_only_place(tmp_path, nowhere):
    "An explicit root that lacks the files is an error naming it alone: no other place is tried."
    root = tmp_path/'root'; root.mkdir()
    with pytest.raises(FileNotFoundError) as e: D.get_lt_data('fmnist_lt', root=root)
    msg = str(e.value)
    assert f'data root {root}: Fashion-MNIST not found there' in msg and 'ALA_DATA' not in msg and 'system' not in msg, msg


def test_fmnist_default_cache_is_home(tmp_path, monkeypatch, nowhere):
    monkeypatch.delenv('XDG_CACHE_HOME'); monkeypatch.setenv('HOME', str(tmp_path/'home'))
    with pytest.raises(FileNotFoundError, match=f"cache: {tmp_path/'home/.cache/ala_nb/fashion-mnist'}"):
        D.load_fashion_mnist()


@pytest.mark.parametrize('where,layout,gz', [('root', '', True), ('root', 'FashionMNIST/raw', False),
                                             ('ala_data', '', False), ('ala_data', 'FashionMNIST/raw', True),
                                             ('system', '', True), ('xdg', 'ala_nb/fashion-mnist', True),
                                             ('xdg', 'ala_nb/fashion-mnist/FashionMNIST/raw', False)])
def test_fmnist_found_in_every_place_and_layout(tmp_path, nowhere, where, layout, gz):
    base = tmp_path/'root' if where == 'root' else nowhere[where]
    a = _write_fmnist(base/layout, gz=gz)
    tx, ty, sx, sy = D.load_fashion_mnist(root=tmp_path/'root' if where == 'root' else None)
    assert tx.shape == (40, 1, 28, 28) and tx.dtype == torch.uint8 and sx.shape == (20, 1, 28, 28)
    assert np.array_equal(tx[:, 0].numpy(), a['train_x']) and ty.tolist() == a['train_y'].tolist()
    assert np.array_equal(sx[:, 0].numpy(), a['test_x']) and sy.dtype == torch.int64
    d = D.get_lt_data('fmnist_lt', root=tmp_path/'root' if where == 'root' else None, n_max=4, imb_factor=4, val_per_class=0)
    assert d.counts == [4, 3, 2, 2, 2, 1, 1, 1, 1, 1] and d.train_x.shape == (18, 1, 28, 28)
    assert d.classes[0] == 'T-shirt/top' and torch.bincount(d.test_targets).tolist() == [2] * 10


def test_fmnist_search_order(tmp_path, nowhere):
    _write_fmnist(nowhere['system'], seed=1); _write_fmnist(nowhere['ala_data'], seed=2)
    assert D.find_fashion_mnist()['train_x'].parent == nowhere['ala_data']            # ALA_DATA before Debian's
    _write_fmnist(tmp_path/'root', seed=3)
    assert D.find_fashion_mnist(tmp_path/'root')['train_x'].parent == tmp_path/'root'  # root before ALA_DATA


def test_fmnist_download_fallback(tmp_path, monkeypatch, nowhere):
    calls = []
    class FakeFashionMNIST:                           # stands in for torchvision's download (no network here)
        def __init__(self, root, train=True, download=False):
            calls.append((Path(root), download)); _write_fmnist(Path(root)/'FashionMNIST/raw', gz=False)
    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', FakeFashionMNIST)
    with pytest.raises(FileNotFoundError): D.load_fashion_mnist()                     # no download unless asked
    tx = D.load_fashion_mnist(download=True)[0]
    cache = nowhere['xdg']/'ala_nb/fashion-mnist'
    assert calls == [(cache, True)] and tx.shape == (40, 1, 28, 28)
    class Offline:
        def __init__(self, *a, **k): raise RuntimeError('Error downloading train-images-idx3-ubyte.gz')
    shutil.rmtree(cache); monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', Offline)
    with pytest.raises(FileNotFoundError, match=r'(?s)Downloading into .* failed: RuntimeError: Error downloading.*apt-get install'):
        D.load_fashion_mnist(download=True)


@pytest.mark.parametrize('damage,msg', [
    (lambda b: b'\x08\x03' + b[2:], 'not an IDX file'),
    (lambda b: b[:-100], r'IDX header says \(40, 28, 28\)'),
    (lambda b: b[:2] + b'\x08\x02' + b[4:], 'IDX file has 2 dimensions, expected 3'),
    (lambda b: b'', 'not an IDX file'),
    (None, 'corrupt gzip data'),
])
def test_fmnist_corrupt_idx(tmp_path, nowhere, damage, msg):
    _write_fmnist(nowhere['ala_data'], gz=damage is None)
    name = D.FMNIST_FILES['train_x']
    if damage is None:     # a truncated gzip stream
        p = nowhere['ala_data']/(name + '.gz'); p.write_bytes(p.read_bytes()[:-20])
    else:
        p = nowhere['ala_data']/name; p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(ValueError, match=f'{p}: {msg}'): D.get_lt_data('fmnist_lt', n_max=4, imb_factor=4)


def test_fmnist_inconsistent_files(tmp_path, nowhere):
    _write_fmnist(nowhere['ala_data'], gz=False)
    _write_idx(nowhere['ala_data']/D.FMNIST_FILES['test_y'], np.full(20, 12), gz=False)
    with pytest.raises(ValueError, match='t10k-labels-idx1-ubyte: label 12 out of range for 10 classes'): D.load_fashion_mnist()
    _write_idx(nowhere['ala_data']/D.FMNIST_FILES['test_y'], np.zeros(19), gz=False)
    with pytest.raises(ValueError, match='t10k-images-idx3-ubyte has 20 images but .*t10k-labels-idx1-ubyte has 19 labels'):
        D.load_fashion_mnist()
    _write_idx(nowhere['ala_data']/D.FMNIST_FILES['test_x'], np.zeros((20, 32, 32)), gz=False)
    with pytest.raises(ValueError, match='expected uint8 images of 28x28'): D.load_fashion_mnist()


# ---------------------------------------------------------------- the default benchmark, end to end
def test_fmnist_lt_default():
    d = D.get_lt_data('fmnist_lt')
    assert d.counts == [1280, 691, 373, 201, 108, 58, 31, 17, 9, 5] and len(d.train) == 2773
    assert {k: len(v) for k, v in D.shot_groups(d.counts).items()} == dict(many=5, medium=2, few=3)
    assert torch.bincount(d.test_targets).tolist() == [1000] * 10
    assert torch.equal(D.get_lt_data('fmnist_lt', seed=0).train_x, d.train_x)
    assert not torch.equal(D.get_lt_data('fmnist_lt', seed=5).train_x, d.train_x)


# ---------------------------------------------------------------- DeviceLoader sharding edge cases
@pytest.mark.parametrize('N,world,bs,drop', [(2, 3, 4, False), (10, 4, 2, False), (10, 4, 2, True), (7, 1, 3, True)])
def test_device_loader_shards(N, world, bs, drop):
    x = torch.randint(0, 256, (N, 1, 6, 6), dtype=torch.uint8); y = torch.arange(N)
    loaders = [D.DeviceLoader(x, y, bs, (0.5,), (0.25,), rank=r, world_size=world, drop_last=drop, seed=9) for r in range(world)]
    for l in loaders: l.set_epoch(2)
    parts = [[t for _, yb in l for t in yb.tolist()] for l in loaders]
    assert len({len(l) for l in loaders}) == 1 and [len(list(l)) for l in loaders] == [len(loaders[0])] * world
    per = -(-N // world)
    if not drop:
        assert all(len(p) == per for p in parts) and set().union(*map(set, parts)) == set(range(N))
        order = torch.randperm(N, generator=D.seeded_generator(9, 2)).tolist()
        padded = (order * world)[:per * world]
        assert parts == [padded[r::world] for r in range(world)]
    else:
        assert all(len(p) == per // bs * bs for p in parts)


# ---------------------------------------------------------------- issue 17: what a split file and ALA_DATA may not do
from clitools import run


@pytest.mark.parametrize('line', ['../outside.jpg 0', '/etc/hosts 0', 'train/../../outside.jpg 0', 'train/a/../../../x.jpg 1'])
def test_split_file_paths_stay_under_the_root(tmp_path, line):
    "A path that leaves the image root (absolute, or with '..') is refused, naming the file and line, before any image is read."
    sf = tmp_path/'ImageNet_LT_train.txt'; sf.write_text(f'train/a/1.jpg 0\n{line}\n')
    with pytest.raises(ValueError, match=rf'{sf}:2: path .* leaves the image root'):
        D.SplitFileDataset(tmp_path/'root', sf, 1000)


@pytest.mark.parametrize('data', [b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe', b'a.jpg 0\nb.jpg\x00 1\n'])
def test_binary_split_file_is_named(tmp_path, data):
    sf = tmp_path/'Places_LT_train.txt'; sf.write_bytes(data)
    with pytest.raises(ValueError, match=rf'{sf}(:\d+)?: not a text split file'):
        D.SplitFileDataset(tmp_path, sf, 365)


def _split_set(d, train_labels, C=1000):
    "ImageNet-LT split files under `d` (no images needed until one is read)."
    (d/'ImageNet_LT_train.txt').write_text(''.join(f'train/n{c:03d}/{i}.JPEG {c}\n' for i, c in enumerate(train_labels)))
    (d/'ImageNet_LT_test.txt').write_text(''.join(f'val/{c}.JPEG {c}\n' for c in range(C)))
    return d


def test_split_file_missing_classes_names_the_file(tmp_path):
    _split_set(tmp_path, [c for c in range(1000) if c not in (3, 500, 999)])
    with pytest.raises(ValueError, match=rf"{tmp_path/'ImageNet_LT_train.txt'}: no training image of 3 of 1000 classes \(3, 500, 999\)"):
        D.get_lt_data('imagenet_lt', root=tmp_path)
    _split_set(tmp_path, range(1000))
    assert D.get_lt_data('imagenet_lt', root=tmp_path).counts == [1] * 1000


@pytest.mark.parametrize('case', ['missing_classes', 'binary', 'escape'])
def test_split_file_errors_through_ala_train(tmp_path, case):
    "The same refusals from the shell: one line naming the split file, exit 2, no run folder."
    _split_set(tmp_path, range(998) if case == 'missing_classes' else range(1000))
    sf = tmp_path/'ImageNet_LT_train.txt'
    if case == 'binary': sf.write_bytes(b'\xff\xd8\xff\xe0' + bytes(range(256)))
    if case == 'escape': sf.write_text(sf.read_text() + '../../etc/hosts 0\n')
    p = run('ala_train', '--preset', 'imagenet_lt_r50', '--data_root', tmp_path, '--device', 'cpu', '--out', tmp_path/'run')
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith('ala_train: error: ') and str(sf) in lines[0], p.stderr
    assert not (tmp_path/'run').exists()


@pytest.mark.parametrize('kind', ['missing', 'file'])
def test_ala_data_must_name_a_folder(tmp_path, nowhere, monkeypatch, kind):
    "ALA_DATA naming no folder is an error naming ALA_DATA and the path; no fallback to Debian's or the cache's copy."
    _write_fmnist(nowhere['system'])
    bad = tmp_path/'no_such_folder'
    if kind == 'file': bad.write_text('x')
    monkeypatch.setenv('ALA_DATA', str(bad))
    for f in (D.find_fashion_mnist, lambda: D.get_lt_data('fmnist_lt', n_max=4, imb_factor=4), lambda: D.load_cifar('cifar10_lt'),
              lambda: D.get_lt_data('places_lt')):
        with pytest.raises((FileNotFoundError, NotADirectoryError), match=f'ALA_DATA={bad}: '): f()
    monkeypatch.setenv('ALA_DATA', '')                    # empty: unset
    assert D.find_fashion_mnist()['train_x'].parent == nowhere['system']


def test_ala_data_missing_through_ala_train(tmp_path):
    p = run('ala_train', '--preset', 'fmnist_lt_tiny', '--out', tmp_path/'run', env=dict(ALA_DATA=str(tmp_path/'nope')))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"ALA_DATA={tmp_path/'nope'}: no such folder" in lines[0], p.stderr
    assert not (tmp_path/'run').exists()
