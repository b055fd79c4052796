"""``sccl.config.report_input_error`` under ``accelerate launch``: the error line reaches the
log whichever rank exits first. Run by tests/test_config.py on three processes:
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 3 \\
        tests/dist_scripts/dist_error_check.py
Rank 1 meets a bad input at once; rank 0 meets it seconds later, so that torchrun SIGTERMs it
first (the order that lost the line when rank 0 alone printed it); rank 2 never meets it and
works on. Imports sccl.config only: a launch costs the launcher's start-up and little more.
"""

from __future__ import annotations

import os
import sys
import time

from sccl.config import ConfigError, report_input_error

if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    if rank != 1:
        time.sleep(5 if rank == 0 else 120)  # torchrun SIGTERMs it meanwhile
    if rank == 2:
        sys.exit(0)
    error = ConfigError("bad.yaml:3: loss.temperature: expected a number, got 'x' (str)")
    sys.exit(report_input_error(error))
