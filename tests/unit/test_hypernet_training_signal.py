"""A fresh hypernetwork is the identity, yet every block parameter receives a training signal."""
import torch

from hyperedit.nets import HyperNet


def test_fresh_blocks_are_identity_and_all_block_parameters_get_gradients():
    torch.manual_seed(0)
    net = HyperNet(d_in=6, d_out=4, rank=3, n_blocks=2, n_modules=2, lr_init=1e-3)
    keys, grads = torch.randn(5, 6), torch.randn(5, 4)
    pseudo_keys, pseudo_grads = net(keys, grads, 1)
    # identity at initialisation (the normaliser has seen nothing yet)
    assert torch.allclose(pseudo_keys, keys, atol=1e-5) and torch.allclose(pseudo_grads, grads, atol=1e-5)
    (pseudo_keys.sum() + (pseudo_grads ** 2).sum()).backward()
    for i, block in enumerate(net.blocks):
        # B and the bias start at zero: with relu their gradient would be exactly zero forever
        assert block.B.grad is not None and block.B.grad.abs().sum() > 0, f"block {i}: B gets no gradient"
        assert block.bias.grad.abs().sum() > 0, f"block {i}: bias gets no gradient"
