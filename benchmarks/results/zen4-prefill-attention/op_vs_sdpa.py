import torch, time
import torch.nn.functional as F
from llmbin.kernels.cpu.build import load_extension, build_error
ext = load_extension(); print(build_error())
torch.set_num_threads(2)
op = torch.ops.llmbin_cpu.prefill_attention
g = torch.Generator().manual_seed(0)
for (B, H, Hkv, L, D) in [(4, 9, 3, 512, 64), (1, 14, 2, 512, 64), (2, 12, 2, 100, 128), (1, 4, 4, 17, 64), (1, 9, 3, 1, 64)]:
    q = torch.randn(B, L, H, D, generator=g).transpose(1, 2)
    k = torch.randn(B, Hkv, L, D, generator=g); v = torch.randn(B, Hkv, L, D, generator=g)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True).transpose(1, 2)
    sd = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    out = op(q, k, v, D ** -0.5)
    print((B, H, Hkv, L, D), "ours err", (out - ref).abs().max().item(), "sdpa err", (sd - ref).abs().max().item())
    def t(f, n=10):
        f(); s = time.perf_counter()
        for _ in range(n): f()
        return (time.perf_counter() - s) / n * 1e3
    print("  ms sdpa", round(t(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).contiguous()), 2),
          "ours", round(t(lambda: op(q, k, v, D ** -0.5)), 2))
