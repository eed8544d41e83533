"""ala_export beyond its notebook: a real tiny run (`ala_train --preset fmnist_lt_tiny --epochs 1`) exported to each
format and reloaded with that format's own runtime, the metadata read back with each format's own API, the
command line's refusals, and atomic replacement."""
import json, subprocess, sys
import pytest, torch
from clitools import run
from ala_nb.export import FORMATS, META_FILE, export_run, linear_from_cosine

pytest.importorskip('onnxruntime'); pytest.importorskip('onnx'); pytest.importorskip('safetensors')

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A trained run folder, made the way a user makes one."
    d = tmp_path_factory.mktemp('export')/'tiny_ala'
    r = run('ala_train', '--preset', 'fmnist_lt_tiny', '--epochs', '1', '--out', d)
    assert r.returncode == 0, r.stderr
    return d

@pytest.fixture(scope='module')
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp('files')
    return {f: export_run(tiny, out/f'tiny{FORMATS[f]}', f) for f in FORMATS}

def _reference(tiny, n=3):
    "load_model's cosines on `n` images (a batch size the export never saw) and the run's logit scale."
    from ala_nb.eval import load_model
    net = load_model(tiny)
    x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(): return x, net(x), net.model_spec['logit_scale'], net

def _rel(a, b): return float((a - b).abs().max() / b.abs().max())

def test_each_format_gives_load_models_outputs(tiny, exported):
    x, cos, s, _ = _reference(tiny)
    assert s == 30.0
    import onnxruntime as ort
    sess = ort.InferenceSession(exported['onnx']['path'], providers=['CPUExecutionProvider'])
    assert [i.name for i in sess.get_inputs()] == ['images'] and [o.name for o in sess.get_outputs()] == ['logits']
    onnx_out = torch.from_numpy(sess.run(['logits'], {'images': x.numpy()})[0])
    with torch.no_grad():
        ts_out = torch.jit.load(exported['torchscript']['path'])(x)
    from safetensors.torch import load_file
    from ala_nb.models import create_model
    net = create_model('resnet8', 10, normed=True, in_chans=1).eval()
    net.load_state_dict(load_file(exported['safetensors']['path']))        # strict: exactly the network's tensors
    with torch.no_grad(): st_out = net(x)
    errs = dict(onnx=_rel(onnx_out, s * cos), torchscript=_rel(ts_out, s * cos), safetensors=_rel(st_out, cos))
    print('relative errors', errs)
    assert all(e < 1e-4 for e in errs.values()), errs
    assert cos.abs().max() <= 1 and onnx_out.abs().max() > 1                # the files give logits, not cosines
    assert all(r['rel_err'] < 1e-4 for r in exported.values())

def test_metadata_round_trips(tiny, exported):
    final = json.loads((tiny/'final.json').read_text())
    import onnx
    from safetensors import safe_open
    onnx_meta = {p.key: json.loads(p.value) for p in onnx.load(exported['onnx']['path']).metadata_props}
    with safe_open(exported['safetensors']['path'], 'pt') as f: st_meta = {k: json.loads(v) for k, v in f.metadata().items()}
    extra = {META_FILE: ''}
    torch.jit.load(exported['torchscript']['path'], _extra_files=extra)
    ts_meta = json.loads(extra[META_FILE])
    for fmt, m in dict(onnx=onnx_meta, safetensors=st_meta, torchscript=ts_meta).items():
        assert m == exported[fmt]['metadata']
        assert m['format'] == fmt and m['num_classes'] == 10 and m['counts'] == final['counts'] == [128, 87, 59, 40, 27, 18, 12, 8, 5, 4]
        assert m['classes'] == final['classes'] and m['arch'] == 'resnet8' and m['loss'] == 'ala' and m['dataset'] == 'fmnist_lt'
        assert m['input_shape'] == ['batch', 1, 28, 28] and m['input_dtype'] == 'float32'
        assert m['mean'] == [0.2860] and m['std'] == [0.3530] and m['logit_scale'] == 30.0 and m['normed'] is True
        import ala_nb
        assert m['ala_nb_version'] == ala_nb.__version__
    assert onnx_meta['output'].startswith('logits = logit_scale * cosines')
    assert 'multiply by logit_scale' in st_meta['output']

def test_head_into_plain_linear(tiny):
    "The transposed, normalised head in an nn.Linear on normalised features gives the same cosines."
    import torch.nn.functional as F
    from ala_nb.models import create_model
    x, cos, s, net = _reference(tiny)
    plain = create_model('resnet8', 10, normed=False, in_chans=1).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith('linear.')}, strict=False)
    lin = linear_from_cosine(net.linear)
    assert lin.weight.shape == (10, 64) and net.linear.weight.shape == (64, 10)
    with torch.no_grad(): assert _rel(lin(F.normalize(plain.features(x), dim=-1)), cos) < 1e-5

def test_cli_run_and_overwrite(tiny, tmp_path):
    out = tmp_path/'m.onnx'
    r = run('ala_export', tiny, '--format', 'onnx', '--out', out)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    assert r.stdout.startswith(f'wrote {out} (onnx, ') and 'onnxruntime gives' in r.stdout and 'logit_scale 30' in r.stdout
    r = run('ala_export', tiny, '--out', out, '--overwrite', '--json')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res['format'] == 'onnx' and res['rel_err'] < 1e-4 and sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx']

def test_failed_export_leaves_the_old_file(tiny, tmp_path):
    "A file that fails its check is not written, and the file it would replace stays as it was."
    out = tmp_path/'m.safetensors'
    out.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='not written'): export_run(tiny, out, overwrite=True, tol=-1)
    assert out.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['m.safetensors']

def test_cli_refusals(tiny, tmp_path):
    (tmp_path/'old.onnx').write_bytes(b'x')
    (tmp_path/'not_a_run').mkdir()
    bad = [([tmp_path/'nope', '--out', tmp_path/'a.onnx'], f"{tmp_path/'nope'}: no such run folder"),
           ([tmp_path/'not_a_run', '--out', tmp_path/'a.onnx'], f"{tmp_path/'not_a_run'}: not a run folder"),
           ([tiny, '--format', 'tflite', '--out', tmp_path/'a.tfl'], "argument --format: unknown format 'tflite'"),
           ([tiny, '--format', 'onnx'], "--out is required"),
           ([tiny, '--out', tmp_path/'a.bin'], "--format is required"),
           ([tiny, '--format', 'torchscript', '--out', tmp_path/'a.onnx'], "suffix .onnx is onnx's, but --format is torchscript"),
           ([tiny, '--out', tmp_path/'missing'/'a.onnx'], f"folder {tmp_path/'missing'} does not exist"),
           ([tiny, '--out', tmp_path/'old.onnx'], "exists; give --overwrite to replace it"),
           ([tiny, '--format', 'onnx', '--out', tmp_path], "is a folder; give a file name"),
           ([tiny, '--out', tiny/'m.onnx'], "inside the run folder"),
           ([tiny, '--out', tmp_path/'a.onnx', '--checkpoint', 'checkpoint.prev.pt'], "no such checkpoint")]
    for args, msg in bad:
        r = run('ala_export', *args)
        assert r.returncode == 2 and r.stderr.startswith('ala_export: error: ') and msg in r.stderr, (args, r.stderr)
        assert r.stderr.count('\n') == 1 and r.stdout == '', (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['not_a_run', 'old.onnx']
    assert sorted(p.name for p in tiny.iterdir()) == sorted(['adjust_trace.jsonl', 'checkpoint.pt', 'config.json',
                                                              'final.json', 'metrics.csv', 'metrics.jsonl', 'test_outputs.npz'])

def test_help_loads_no_torch():
    code = "import sys; from ala_nb.export import ala_export; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout == 'False\n'
    r = run('ala_export', '--help')
    assert r.returncode == 0 and 'one of: onnx, safetensors, torchscript' in ' '.join(r.stdout.split())

def test_unfinished_run_counts_from_its_profile(tiny, tmp_path):
    "A run without final.json (stopped early): counts from its config's long-tailed profile, the same numbers."
    import shutil
    part = tmp_path/'part'; part.mkdir()
    for f in ('config.json', 'checkpoint.pt'): shutil.copy(tiny/f, part/f)
    m = export_run(part, tmp_path/'p.safetensors')['metadata']
    assert m['counts'] == json.loads((tiny/'final.json').read_text())['counts'] and m['classes'] is None

def test_linear_head_run(tmp_path):
    "A CE run (linear head): logit scale 1, the files give the network's own logits."
    d = tmp_path/'ce'
    r = run('ala_train', '--preset', 'fmnist_lt_tiny', '--epochs', '1', '--loss', 'ce', '--out', d)
    assert r.returncode == 0, r.stderr
    res = export_run(d, tmp_path/'ce.onnx')
    m = res['metadata']
    assert (m['normed'], m['logit_scale'], m['loss']) == (False, 1.0, 'ce') and m['output'].startswith('logits of a linear head')
    x, out, s, _ = _reference(d)
    import onnxruntime as ort
    got = torch.from_numpy(ort.InferenceSession(res['path'], providers=['CPUExecutionProvider']).run(None, {'images': x.numpy()})[0])
    assert s == 1.0 and _rel(got, out) < 1e-4
