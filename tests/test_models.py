"""ala_nb.models beyond its notebook: the cosine head under mixed precision, timm backbones through `create_model`
(shapes, cosines, local weights, error lines), and that importing the package loads only what training uses."""
import subprocess, sys, tempfile, warnings
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from ala_nb.models import ARCHS, NormedLinear, TimmClassifier, check_arch, create_model, is_arch

def cosines_fp32(f, W): return F.normalize(f.float(), dim=-1) @ F.normalize(W.float(), dim=0)

def test_cosine_head_is_float32_under_autocast():
    torch.manual_seed(0)
    m = create_model('resnet8', 10).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out, feat = m(x), m.features(x)
    assert feat.dtype == torch.bfloat16
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cosines_fp32(feat, m.linear.weight.detach()), atol=1e-6, rtol=0)
    assert (out == out.bfloat16().float()).float().mean() < 0.5  # not bf16's 128 steps per octave

def test_plain_head_is_left_to_autocast():
    torch.manual_seed(0)
    m = create_model('resnet8', 10, normed=False).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out, ref = m(x), m.linear(m.features(x))
    assert type(m.linear) is nn.Linear and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=0, rtol=0)

def test_archs_and_is_arch():
    assert ARCHS == ('resnet8', 'resnet20', 'resnet32', 'resnet50', 'resnext50_32x4d', 'resnet152')
    assert all(is_arch(a) for a in ARCHS)
    assert is_arch('timm/resnet10t') and is_arch('timm/resnet50.a1_in1k')
    assert not any(is_arch(a) for a in ('timm/resnet_50', 'timm/', 'resnet34', 'timm', '', None, ['resnet8']))
    with pytest.raises(ValueError, match=r"^unknown arch 'resnet34'; expected one of: resnet8, .*or timm/<name>"):
        check_arch('resnet34')

@pytest.mark.parametrize('name,hw', [('test_vit', 160), ('resnet10t', 48), ('test_convnext', 64)])
@pytest.mark.parametrize('in_chans', [1, 3])
def test_timm_shapes_and_cosines(name, hw, in_chans):
    torch.manual_seed(0)
    m = create_model(f'timm/{name}', 6, in_chans=in_chans).eval()
    assert isinstance(m, TimmClassifier) and type(m.head) is NormedLinear and m.arch == f'timm/{name}'
    x = torch.randn(3, in_chans, hw, hw)
    with torch.no_grad(): out, feat = m(x), m.features(x)
    assert out.shape == (3, 6) and out.dtype == torch.float32 and (out.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(out, cosines_fp32(feat, m.head.weight.detach()), atol=1e-5, rtol=0)
    lin = create_model(f'timm/{name}', 6, normed=False, in_chans=in_chans).eval()
    assert type(lin.head) is nn.Linear and lin.head.in_features == m.num_features
    with torch.no_grad(): assert lin(x).shape == (3, 6)

def test_timm_pretrained_round_trip():
    "timm's own file (nested classifier `head.fc`, `head.norm` staying in the backbone), then our checkpoint of it."
    import timm
    torch.manual_seed(0)
    src = timm.create_model('test_convnext', num_classes=1000).eval()
    with torch.no_grad():
        for mod in src.modules():
            if isinstance(mod, nn.LayerNorm): mod.weight.uniform_(0.5, 1.5); mod.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with tempfile.TemporaryDirectory() as d:
        torch.save(src.state_dict(), f'{d}/timm.pth')
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            m = create_model('timm/test_convnext', 6, pretrained=f'{d}/timm.pth').eval()
        assert len(ws) == 1 and "unused from file: ['head.head.fc.weight', 'head.head.fc.bias']" in str(ws[0].message)
        rep = m.pretrained_report
        assert (rep['skipped'], rep['missing'], rep['adapted']) == ([], ['head.weight'], [])
        assert 'backbone.head.norm.weight' in rep['loaded']
        with torch.no_grad():
            torch.testing.assert_close(m.features(x), src.forward_head(src.forward_features(x), pre_logits=True))
            out = m(x)
        torch.save(dict(epoch=1, state_dict={'module.' + k: v for k, v in m.state_dict().items()}), f'{d}/ours.pt')
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            again = create_model('timm/test_convnext', 6, pretrained=f'{d}/ours.pt').eval()
        with torch.no_grad(): torch.testing.assert_close(again(x), out, atol=0, rtol=0)

def test_timm_pretrained_other_architecture_is_one_line():
    import timm
    with tempfile.TemporaryDirectory() as d:
        torch.save(timm.create_model('test_vit').state_dict(), f'{d}/vit.pth')
        with pytest.raises(ValueError, match='backbone does not match timm/test_convnext: ') as e:
            create_model('timm/test_convnext', 6, pretrained=f'{d}/vit.pth')
        assert '\n' not in str(e.value) and 'not in file' in str(e.value)

def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, 'timm', None)  # `import timm` now raises ImportError
    for f in (lambda: create_model('timm/resnet50', 10), lambda: check_arch('timm/resnet50')):
        with pytest.raises(ValueError) as e: f()
        msg = str(e.value)
        assert msg.startswith("--arch timm/resnet50: needs the timm extra: pip install 'ala_nb[timm]'") and '\n' not in msg
    assert not is_arch('timm/resnet50')
    assert create_model('resnet8', 3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)

def test_unknown_timm_name_is_one_line():
    with pytest.raises(ValueError) as e: create_model('timm/resnet_50', 10)
    msg = str(e.value)
    assert msg.startswith('--arch timm/resnet_50: unknown timm model (timm ') and 'closest: resnet50' in msg
    assert '\n' not in msg
    with pytest.raises(ValueError, match=r'^--arch timm/: unknown timm model'): check_arch('timm/')

def _loaded(module):
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    return set(subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout.split())

def test_training_imports_only_what_it_uses():
    assert 'timm' not in _loaded('ala_nb.models')
    heavy = {'timm', 'tensorboard', 'matplotlib', 'IPython', 'ipywidgets', 'fasthtml', 'starlette', 'uvicorn', 'httpx'}
    assert not heavy & _loaded('ala_nb.train'), 'is fastprogress >= 1.1 installed? settings.ini pins it below 1.1'

def test_models_import_is_light():
    "`NormedLinear` needs torch only: torchvision (whose import loads its detection ops and sympy) waits for a torchvision backbone."
    code = "import sys, ala_nb.models; print(' '.join(m for m in ('sympy', 'torchvision', 'torchvision.ops') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout.split()
    assert loaded == [], f'import ala_nb.models loaded {loaded}'
    code = "import sys, ala_nb.models as m; m.create_model('resnet50', 3); print('torchvision.ops' in sys.modules)"
    assert subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True).stdout.split() == ['True']
