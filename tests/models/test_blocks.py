

def test_a_mask_first_made_under_inference_mode_still_trains():
    """The patch engine runs under torch.inference_mode; the cached causal mask it creates is reused by
    training, which must be able to save it for backward."""
    import torch

    from anchor_interp.models.blocks import _future_mask, future_mask

    _future_mask.cache_clear()
    with torch.inference_mode():
        assert not future_mask(7, 7).is_inference()
    x = torch.randn(7, 7, requires_grad=True)
    x.masked_fill(future_mask(7, 7), -1e9).softmax(-1).sum().backward()
    assert x.grad is not None
