"""GPTQ against a direct implementation of the METHODS.md equations, and against RTN."""
import torch

from llmbin.methods.rtn import rtn_format
from llmbin.methods.solvers.gptq_loop import gptq_quantize, inverse_cholesky_upper, prepare_hessian
from llmbin.methods.solvers.quant_grid import dequantize_codes, minmax_params, quantize_codes
from llmbin.methods.solvers.uniform_quantizer import UniformColumnQuantizer


def correlated_problem(n=24, k=48, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(tokens, k, generator=g) @ mix
    w = torch.randn(n, k, generator=g)
    return w, x, 2 * x.T @ x / tokens


def direct_gptq(w, h, bits, group, percdamp=0.01):
    """Column by column, no blocking: q_i = quant(w_i); W[:, i:] -= (w_i - q_i)/U_ii * U[i, i:]."""
    W, H, _ = prepare_hessian(w, h, percdamp)
    U = inverse_cholesky_upper(H)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        if i % group == 0:
            scale, zero = minmax_params(W[:, i:i + group], bits)
        q = dequantize_codes(quantize_codes(W[:, i], scale, zero, bits), scale, zero)
        Q[:, i] = q
        W[:, i:] -= torch.outer((W[:, i] - q) / U[i, i], U[i, i:])
    return Q


def test_gptq_equals_direct_equations():
    w, _, h = correlated_problem()
    for group, block in ((16, 16), (16, 32), (12, 20), (48, 7)):
        quantizer = UniformColumnQuantizer(*w.shape, 3, group)
        q, _ = gptq_quantize(w, h, quantizer, blocksize=block)
        torch.testing.assert_close(q, direct_gptq(w, h, 3, group), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(quantizer.to_format().dequantize(), q, atol=1e-6, rtol=1e-6)


def test_gptq_output_error_below_rtn():
    w, x, h = correlated_problem(seed=1)
    for bits in (2, 3, 4):
        quantizer = UniformColumnQuantizer(*w.shape, bits, 16)
        q, _ = gptq_quantize(w, h, quantizer, blocksize=16)
        rtn = rtn_format(w, bits, 16).dequantize()
        err = lambda m: ((x @ (w - m).T) ** 2).sum()  # noqa: E731
        assert err(q) < err(rtn), bits


def direct_act_order(w, h, bits, group, percdamp=0.01):
    """Columns by decreasing H_jj (after damping), one at a time; each group's grid fitted once on the original
    weights of its contiguous columns (static groups)."""
    W, H, _ = prepare_hessian(w, h, percdamp)
    params = [minmax_params(W[:, s:s + group], bits) for s in range(0, W.shape[1], group)]
    order = torch.argsort(torch.diag(H), descending=True)
    Wp, U = W[:, order].clone(), inverse_cholesky_upper(H[order][:, order])
    Q = torch.zeros_like(W)
    for i, col in enumerate(order.tolist()):
        scale, zero = params[col // group]
        q = dequantize_codes(quantize_codes(Wp[:, i], scale, zero, bits), scale, zero)
        Q[:, col] = q
        Wp[:, i:] -= torch.outer((Wp[:, i] - q) / U[i, i], U[i, i:])
    return Q


def test_act_order_and_dead_channels():
    w, x, h = correlated_problem(seed=2)
    h[5, :] = 0
    h[:, 5] = 0
    quantizer = UniformColumnQuantizer(*w.shape, 4, 16)
    q, loss = gptq_quantize(w, h, quantizer, blocksize=16, act_order=True)
    assert torch.equal(quantizer.to_format().dequantize(), q)
    assert torch.equal(q[:, 5], torch.zeros(w.shape[0]))  # a dead input channel holds no weight
    torch.testing.assert_close(q, direct_act_order(w, h, 4, 16), atol=1e-5, rtol=1e-5)
    plain, _ = gptq_quantize(w, h, UniformColumnQuantizer(*w.shape, 4, 16), blocksize=16)
    assert not torch.allclose(q, plain)  # the visiting order matters on this problem


def test_mse_fit_never_worse_than_minmax_and_clips_outliers():
    from llmbin.methods.solvers.quant_grid import mse_params

    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 32, generator=g)
    w[:, 0] = 8.0  # one outlier per row: min-max wastes most of the 4-bit grid on it
    imp = torch.rand(32, generator=g)
    for importance in (None, imp):
        weights = torch.ones(32) if importance is None else importance
        err = lambda s, z: (((w - dequantize_codes(quantize_codes(w, s[:, None], z[:, None], 4), s[:, None], z[:, None]))  # noqa: E731
                              ** 2) @ weights)
        mm, ms = err(*minmax_params(w, 4)), err(*mse_params(w, 4, importance))
        assert (ms <= mm + 1e-6).all() and ms.sum() < 0.97 * mm.sum()
    scale_mm, _ = minmax_params(w, 4)
    scale_ms, _ = mse_params(w, 4)
    assert (scale_ms <= scale_mm).all() and (scale_ms < scale_mm).float().mean() > 0.5  # ranges were shrunk


def test_gptq_mse_fit_packs_exactly_and_beats_rtn_mse():
    w, x, h = correlated_problem(seed=5)
    quantizer = UniformColumnQuantizer(*w.shape, 3, 16, "mse", torch.diag(h))
    q, _ = gptq_quantize(w, h, quantizer, blocksize=16, act_order=True)
    assert torch.equal(quantizer.to_format().dequantize(), q)
    err = lambda m: ((x @ (w - m).T) ** 2).sum()  # noqa: E731
    assert err(q) < err(rtn_format(w, 3, 16, "mse").dequantize())
