"""README's "From Python" snippet runs as written, from an empty folder, with nothing of the clone around it."""
import os, re, subprocess, sys
from pathlib import Path
from clitools import ENV, ROOT

def readme_snippet(heading:str='## From Python') -> str:
    "The first ```python block after `heading` in README.md."
    text = (ROOT/'README.md').read_text()
    assert heading + '\n' in text, f'README.md has no section {heading!r}'
    m = re.search(r'```python\n(.*?)```', text[text.index(heading + '\n'):], re.S)
    assert m, f'README.md: no ```python block under {heading!r}'
    return m.group(1)

def test_from_python_snippet_runs_in_an_empty_folder(tmp_path):
    code = readme_snippet()
    assert "load_model('runs/tiny_ala')" in code and 'logit_scale' in code
    (tmp_path/'snippet.py').write_text(code)
    r = subprocess.run([sys.executable, 'snippet.py'], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r'^predicted \[(\d, ){7}\d\] true \[(\d, ){7}\d\]$', r.stdout, re.M), r.stdout[-1000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['runs', 'snippet.py']
    assert (tmp_path/'runs/tiny_ala/final.json').is_file() and (tmp_path/'runs/tiny_ala/checkpoint.pt').is_file()
    r = subprocess.run([sys.executable, 'snippet.py'], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, 'a second run (the folder now exists) fails: ' + r.stderr[-2000:]
