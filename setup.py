"Packaging for ala_nb: everything is read from settings.ini (nbdev 2 layout), without pkg_resources."
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg_file = Path(__file__).parent/'settings.ini'
config = ConfigParser(delimiters=['='])
config.read(cfg_file, encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email license min_python lib_name user'.split():
    if key not in cfg: raise KeyError(f"{cfg_file}: missing setting {key!r}")

licenses = dict(apache2=('Apache Software License 2.0', 'OSI Approved :: Apache Software License'))
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.9 3.10 3.11 3.12 3.13'.split()
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
min_python = cfg['min_python']

requirements = cfg.get('requirements', '').split()
# every `NAME_requirements` line is the extra `[NAME]`; `[dev]` is the toolchain plus every extra, so CI tests them all
extras = {k[:-len('_requirements')]: cfg[k].split() for k in cfg
          if k.endswith('_requirements') and k not in ('dev_requirements', 'pip_requirements', 'conda_requirements')}
extras['dev'] = cfg.get('dev_requirements', '').split() + sorted({r for rs in extras.values() for r in rs})
console_scripts = cfg.get('console_scripts', '').split()
readme = Path(__file__).parent/'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]]
                + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + min_python,
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else cfg['description'],
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    author=cfg['author'], author_email=cfg['author_email'], description=cfg['description'],
    keywords=cfg['keywords'],
)
