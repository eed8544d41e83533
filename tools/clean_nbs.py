"""Clean notebooks as `nbdev_clean` does, then give them the kernel metadata JupyterLab writes when it opens them.

JupyterLab (4.x) sets `metadata.kernelspec` to the kernel's spec (`display_name: "Python 3 (ipykernel)"`) and
`metadata.language_info` to what the kernel reports as soon as the kernel starts; a notebook whose stored values
differ opens marked as modified. `nbdev_clean` keeps `language_info` (settings.ini: allowed_metadata_keys) but
always rewrites `kernelspec.display_name` to the kernel's name, so this script puts the display name back.

    python tools/clean_nbs.py            # every notebook under nbs/
    python tools/clean_nbs.py nbs/13_fig2_quantity.ipynb
"""
import sys, json
from pathlib import Path

KERNELSPEC = {'display_name': 'Python 3 (ipykernel)', 'language': 'python', 'name': 'python3'}

def language_info():
    "What ipykernel reports for this Python (JupyterLab stores the same on open)."
    from ipykernel.ipkernel import IPythonKernel
    return dict(IPythonKernel.language_info)

def fix_metadata(nb:dict)->dict:
    "Set the kernelspec JupyterLab writes; add language_info if the notebook has none."
    nb['metadata']['kernelspec'] = dict(KERNELSPEC)
    nb['metadata'].setdefault('language_info', language_info())
    return nb

def main(paths):
    "Clean `paths` (default: every notebook under nbs/); run from the repository root (nbdev reads settings.ini)."
    from nbdev.clean import nbdev_clean
    from execnb.nbio import write_nb, dict2nb
    root = Path(__file__).resolve().parent.parent
    paths = [Path(p) for p in paths] or sorted(p for p in (root/'nbs').rglob('*.ipynb') if not any(q.startswith(('.', '_')) for q in p.parts))
    for p in paths:
        nbdev_clean.__wrapped__(str(p))
        nb = json.loads(p.read_text(encoding='utf-8'))
        write_nb(fix_metadata(nb), p)

if __name__ == '__main__': main(sys.argv[1:])
