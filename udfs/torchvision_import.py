"""torchvision without TorchDynamo: ~1.4 s and ~145 MB off every Python worker's start.

torchvision 0.29 imports `is_compile_supported` from `torch._dynamo.utils` at the top of
`torchvision/ops/roi_align.py` (so on `import torchvision`), and that one name loads all of
TorchDynamo: measured here, `import udfs.scoring_udf` in a fresh process took 4.2-4.8 s and
900 MB with it, 2.7-3.1 s and 755 MB without; five pairs of mobilenet_v3_small jobs (2,040
images, 2 cores) ran 27.1 s against 30.2 s on average from spark-submit to exit, every pair
faster, with worker peak RSS 895-936 MB against 1,026-1,081 MB. The driver imports torchvision
too (the weights check), while Spark starts. Nothing in this job calls roi_align; TorchDynamo is
needed only for `--graph compile` (torch.compile) and for torchvision.transforms.v2, which only
`--gpu-decode` uses (`udfs.gpu_decode` imports it there).

`load_torchvision` imports torchvision with a stand-in for that one module, whose
`is_compile_supported` imports the real one when first called, and takes the stand-in out
again, so that a later `import torch._dynamo` (torch.compile) loads the real package. It does so
only for the torchvision release it was checked against (`VERIFIED`): another release is imported
as it is, with TorchDynamo. tests/test_torchvision_import.py checks, in fresh processes, that
TorchDynamo stays out and that torch.compile and roi_align still work afterwards.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types

VERIFIED = "0.29."  # torchvision releases whose only import of TorchDynamo is roi_align's
_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type: str) -> bool:
    from torch._dynamo.utils import is_compile_supported  # the real one, loaded on first use

    return is_compile_supported(device_type)


def load_torchvision() -> None:
    """Import torchvision once per process, without TorchDynamo where that is verified."""
    if "torchvision" in sys.modules:
        return
    if _DYNAMO in sys.modules or not importlib.metadata.version("torchvision").startswith(VERIFIED):
        import torchvision  # noqa: F401  (as it is)
        return
    stand_in = types.ModuleType(_DYNAMO_UTILS)
    stand_in.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    sys.modules[_DYNAMO_UTILS] = stand_in
    try:
        import torchvision  # noqa: F401
    finally:
        if sys.modules.get(_DYNAMO_UTILS) is stand_in:
            del sys.modules[_DYNAMO_UTILS]
