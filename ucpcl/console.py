"""The `ucpcl` console script: passive OpenMP waiting (unless the user chose), then `ucpcl.cli.main`.

Written by hand, not exported from a notebook: it must set the variable before anything imports PyTorch,
which reads OMP_WAIT_POLICY once, when it loads OpenMP (nbs/12_cli.ipynb explains why)."""

import os


def run() -> int:
    "Entry point of the `ucpcl` console script."
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning threads: 5x slower on a busy machine
    from ucpcl.cli import main

    return main()
