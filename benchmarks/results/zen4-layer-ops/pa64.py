import time, torch, llmbin, statistics
from llmbin.kernels.ops import prefill_attention_op, layer_ops
torch.set_num_threads(2)
op = prefill_attention_op(64, 64); ops = layer_ops()
for T in (64, 512):
    q = torch.randn(1, 9, T, 64); k = torch.randn(1, 3, T, 64); v = torch.randn(1, 3, T, 64)
    g = torch.randn(1, T, 1536); u = torch.randn(1, T, 1536); x = torch.randn(1, T, 576); w = torch.randn(576)
    qq = torch.randn(1, T, 576); kk = torch.randn(1, T, 192); cs = torch.randn(1, T, 64)
    for name, f in [("attn", lambda: op(q, k, v, 0.125)), ("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)),
                    ("silu_mul", lambda: ops.silu_mul(g, u)), ("torch silu*u", lambda: torch.nn.functional.silu(g) * u),
                    ("rms", lambda: ops.rms_norm(x, w, 1e-5)), ("rotary", lambda: ops.rotary_qk(qq, kk, cs, cs, 64))]:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for _ in range(20): f()
            ts = []
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(50): f()
                ts.append((time.perf_counter() - t) / 50)
            print(T, name, nt, f"{statistics.median(ts)*1e6:.1f} us")
