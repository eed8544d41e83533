"Every notebook in nbs/ opens in JupyterLab without being marked as modified, and its widget cells show a picture without a kernel."
import json, sys, copy
from pathlib import Path
import pytest
import nbformat
from nbformat.validator import normalize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'tools'))
from clean_nbs import KERNELSPEC, fix_metadata

NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if not any(q.startswith(('.', '_')) for q in p.relative_to(ROOT).parts))
WIDGET = 'application/vnd.jupyter.widget-view+json'
FIX = 'run `python tools/clean_nbs.py` from the repository root'

def test_found_notebooks(): assert len(NBS) >= 20, NBS

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_opens_unmodified(path):
    "What JupyterLab 4 changes on open: kernelspec and language_info (set from the kernel), missing cell ids, nbformat < 4.5."
    raw = json.loads(path.read_text(encoding='utf-8'))
    assert (raw['nbformat'], raw['nbformat_minor']) == (4, 5), f"{path.name}: nbformat {raw['nbformat']}.{raw['nbformat_minor']}, expected 4.5"
    md = raw['metadata']
    assert md.get('kernelspec') == KERNELSPEC, f"{path.name}: metadata.kernelspec {md.get('kernelspec')} != {KERNELSPEC}: {FIX}"
    li = md.get('language_info', {})
    assert li.get('name') == 'python' and li.get('codemirror_mode') == {'name': 'ipython', 'version': 3} \
        and li.get('file_extension') == '.py', f"{path.name}: metadata.language_info {li} is not ipykernel's: {FIX}"
    ids = [c.get('id') for c in raw['cells']]
    assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: cells without ids or with repeated ids"
    nb = nbformat.reads(path.read_text(encoding='utf-8'), as_version=4)
    nbformat.validate(nb)
    changes, normalized = normalize(copy.deepcopy(raw))
    assert changes == 0 and normalized == raw, f"{path.name}: nbformat's normalize changes {changes} thing(s)"
    assert fix_metadata(copy.deepcopy(raw)) == raw

@pytest.mark.parametrize('path', NBS, ids=lambda p: p.name)
def test_widgets_have_a_picture(path):
    "A widget output carries a PNG in the same bundle: a reader without a kernel (nbviewer, GitHub, the docs site) sees it."
    nb = json.loads(path.read_text(encoding='utf-8'))
    for c in nb['cells']:
        for o in c.get('outputs', []):
            if WIDGET in o.get('data', {}):
                assert 'image/png' in o['data'], f"{path.name}: cell {c['id']}: a widget output with no image/png beside it"

def test_fix_metadata_sets_jupyterlab_values():
    nb = {'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}}
    md = fix_metadata(nb)['metadata']
    assert md['kernelspec']['display_name'] == 'Python 3 (ipykernel)' and md['language_info']['name'] == 'python'
