"""The chunked head + log-softmax + gather against plain autograd, with the softmax kept for backward and with
the logits recomputed there (the path past KEEP_SOFTMAX_BYTES)."""

import pytest
import torch
from torch import nn

from alignkit.models import logprobs


@pytest.mark.parametrize("keep_bytes", [0, logprobs.KEEP_SOFTMAX_BYTES], ids=["recomputed", "kept"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_plain_log_softmax(monkeypatch, keep_bytes, dtype):
    monkeypatch.setattr(logprobs, "KEEP_SOFTMAX_BYTES", keep_bytes)
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    hidden = torch.randn(13, 16, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    upstream = torch.randn(13)

    out = logprobs._LinearLogSoftmaxGather.apply(hidden, head.weight, targets, 4, dtype)  # chunks of 4 rows
    (out * upstream).sum().backward()
    got = out.detach(), hidden.grad.clone(), head.weight.grad.clone()

    hidden.grad, head.weight.grad = None, None
    logits = (hidden.to(dtype) @ head.weight.to(dtype).T).float()
    plain = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (plain * upstream).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(got, (plain.detach(), hidden.grad, head.weight.grad)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)

