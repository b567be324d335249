"""What the browser tests share about notebook cells: sources run in the kernel, and reading a cell's output."""
import re

#: a loader wrapper that sleeps per batch, so a training run lasts long enough to watch and stop
SLOW_LOADER = '''
class SlowLoader:
    """The digits loader, a little slower per step so that a run lasts long enough to watch."""
    def __init__(self, loader, delay):
        self.loader, self.delay = loader, delay
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for batch in self.loader:
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
