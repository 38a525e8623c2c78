"""int4 on CUDA (skipped without a GPU; UNTESTED in the session that wrote it, which had none): the
plain-torch path (dequantise, matmul) on the device gives the CPU int4 model's logits."""

from __future__ import annotations

import pytest
import torch
from parity_batch import PagedSim
from test_parity_gpu import _CudaSim

from gemmaserve.demo import write_demo_model
from gemmaserve.model.loader import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

IDS = [2, 105, 358, 356, 383, 107, 313, 419, 349, 352, 285, 464, 452, 274, 106, 107]


def test_int4_cuda_logits_match_cpu(tmp_path):
    d = write_demo_model(tmp_path / "tiny", "tiny", seed=3)
    cpu, _ = load_model(d, quantization="int4", int4_group=32, dtype=torch.float32)
    gpu, _ = load_model(d, quantization="int4", int4_group=32, dtype=torch.float32, device="cuda")
    assert torch.equal(gpu.layers[0].experts.gate_up_packed.cpu(), cpu.layers[0].experts.gate_up_packed)
    ref_sim, gpu_sim = PagedSim(cpu), _CudaSim(gpu)
    want = cpu(ref_sim.batch([(0, IDS)], all_logits=True), ref_sim.caches)
    got = gpu(gpu_sim.batch([(0, IDS)], all_logits=True), gpu_sim.caches).cpu()
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
