"Markers of the suite: `gpu` (needs CUDA; `pytest -m gpu` picks exactly these, as bench/device_check.py does)."
def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs CUDA (skipped without it); selected with -m gpu')
    config.addinivalue_line('markers', 'slow: takes more than a minute')
