"""Runs inside the environment tests/test_binder.py builds from binder/requirements.txt alone: executes
every notebook top to bottom in a kernel of that environment (nbclient), as a Binder user would.

Usage: python tests/binder_runner.py WORK_DIR NOTEBOOK...

Prints where the package and the kernel come from, then one line per notebook with its time; exits 1 with
the failing cell and its traceback when a notebook fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(work: Path, notebooks: list[Path]) -> int:
    # the kernel "python3" is this interpreter, whatever user-level kernelspecs the machine has
    spec = work / "jupyter-path" / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        ),
        encoding="utf-8",
    )
    os.environ["JUPYTER_PATH"] = str(spec.parents[1])

    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager

    import addin_studio

    print(f"addin_studio from {Path(addin_studio.__file__).parent}")
    print(f"kernel python3: {KernelSpecManager().get_kernel_spec('python3').argv[0]}")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        run_dir = work / "runs" / path.stem
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            nbclient.NotebookClient(
                nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(run_dir)}}
            ).execute()
        except nbclient.exceptions.CellExecutionError as err:
            print(f"FAILED {path.name}:\n{err}")
            return 1
        print(f"ran {path.stem} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
