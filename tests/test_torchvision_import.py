"""torchvision without TorchDynamo (udfs/torchvision_import.py), each case in a fresh Python
process, since what is under test is what an import leaves in `sys.modules`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_executor_side_imports_without_torch_dynamo():
    """What a Python worker imports to run the UDF, and what the driver imports to run the job."""
    out = run_fresh("""
        import sys
        import udfs.scoring_udf, jobs.run
        print(sorted(name for name in sys.modules if name.startswith("torch._dynamo")))
    """)
    assert out.strip() == "[]"


def test_torch_compile_and_roi_align_work_after_it():
    """The stand-in is gone once torchvision is in: torch.compile loads the real TorchDynamo, and
    roi_align's `is_compile_supported` answers through it."""
    out = run_fresh("""
        import sys
        import torch
        import udfs.model  # torchvision, through load_torchvision
        from torchvision.ops import roi_align
        roi_align_module = sys.modules["torchvision.ops.roi_align"]  # the name itself is the function

        compiled = torch.compile(lambda x: torch.sin(x) + 1, backend="eager")
        x = torch.arange(4.0)
        assert torch.equal(compiled(x), torch.sin(x) + 1)
        import torch._dynamo.utils as real_utils
        assert hasattr(real_utils, "counters")  # the real module, not the stand-in
        assert roi_align_module.is_compile_supported("cpu") is real_utils.is_compile_supported("cpu")

        features = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
        boxes = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [1, 2.0, 2.0, 7.0, 7.0]])
        out = roi_align(features, boxes, output_size=2, spatial_scale=1.0, sampling_ratio=2)
        torch.use_deterministic_algorithms(True)  # the branch that calls is_compile_supported
        again = roi_align(features, boxes, output_size=2, spatial_scale=1.0, sampling_ratio=2)
        assert out.shape == (2, 3, 2, 2) and torch.allclose(out, again)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_gpu_decode_transforms_come_with_torch_dynamo_when_asked_for():
    out = run_fresh("""
        import sys
        from udfs.gpu_decode import tensor_transforms
        assert "torch._dynamo" not in sys.modules
        F = tensor_transforms()
        print(F.__name__, "torch._dynamo" in sys.modules)
    """)
    assert out.strip() == "torchvision.transforms.v2.functional True"
