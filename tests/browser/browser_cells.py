"""What the browser tests share about notebook cells: sources run in the kernel, and reading a cell's
output."""

import re

#: a loader wrapper that sleeps per batch, so a plot has several points to show; with ``hold_at=k`` its first
#: pass also waits before batch k until ``release`` is set (a cell runs ``w.train_loader.release.set()``):
#: the run is then surely still training while the page is looked at, however busy the machine is
SLOW_LOADER = '''
import threading
class SlowLoader:
    """The digits loader, a little slower per step; optionally held at one batch until released."""
    def __init__(self, loader, delay, hold_at=None):
        self.loader, self.delay, self.hold_at = loader, delay, hold_at
        self.held, self.release = threading.Event(), threading.Event()
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.hold_at and not self.held.is_set():
                self.held.set()
                if not self.release.wait(300):
                    raise RuntimeError("SlowLoader: never released")
            time.sleep(self.delay)
            yield batch
'''


def kernel_value(lab, cell: int, key: str) -> str:
    """Run ``cell`` (which prints ``KEY=value`` lines) and return the value printed for ``key``."""
    lab.run(cell)
    out = lab.output(cell)
    m = re.search(rf"^{key}=(.*)$", out, re.M)
    assert m, out
    return m.group(1)
