"""Execute notebooks in place, keeping their outputs, as `nbdev_test` runs them: the notebook's folder is the working
folder, and a cell whose directives name a test flag of settings.ini (`#| slow`, `#| gpu`) or `#| eval: false` is not
run (its stored source and outputs stay as they were). Use it to re-render the study notebooks after `nbs/study`
changes, then `python tools/clean_nbs.py` on the same notebooks:

    python tools/render_nbs.py nbs/11_study.ipynb nbs/18_table1.ipynb && python tools/clean_nbs.py nbs/11_study.ipynb nbs/18_table1.ipynb

Any cell that raises stops the notebook with the error and leaves the file untouched (exit 1).
"""
import configparser, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_flags()->set:
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    return set(c.get('DEFAULT', 'tst_flags', fallback='').split())

def skipped(src:str, flags:set)->bool:
    "Whether `nbdev_test` (without --flags) leaves this code cell out."
    for line in src.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith('#|'): break
        words = s[2:].replace(':', ' ').split()
        if words and (words[0] in flags or words[:2] == ['eval', 'false']): return True
    return False

def render(fn:Path, timeout:int=1800):
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    nb = nbformat.read(fn, as_version=4)
    if any(skipped(c.source, {'skip_exec'}) for c in nb.cells if c.cell_type == 'code'): return print(f"{fn}: skip_exec, left as it is")
    flags, kept = test_flags(), {}
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'code' and skipped(c.source, flags):
            kept[i] = (c.source, c.outputs, c.get('execution_count')); c.source = ''
    ExecutePreprocessor(timeout=timeout, kernel_name='python3').preprocess(nb, {'metadata': {'path': str(fn.parent)}})
    for i, (src, outs, n) in kept.items(): nb.cells[i].source, nb.cells[i].outputs, nb.cells[i].execution_count = src, outs, n
    nbformat.write(nb, fn)
    print(f"{fn}: rendered ({len(kept)} cells left as they were)")

if __name__ == '__main__':
    if len(sys.argv) < 2: sys.exit(__doc__)
    for a in sys.argv[1:]:
        try: render(Path(a))
        except Exception as e:
            print(f"{a}: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr); sys.exit(1)
