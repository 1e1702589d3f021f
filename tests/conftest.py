"""Session-wide test set-up.

Importing triton (which torch._dynamo, torchvision.ops and lerobot pull in lazily) in a process
that has already created a LIBERO environment with EGL rendering segfaults. Tests create
environments in-process, so which test file runs first would decide whether a later import
crashes the session; importing it here, before any environment exists, removes that order
dependence.
"""

import torch._dynamo  # noqa: F401
