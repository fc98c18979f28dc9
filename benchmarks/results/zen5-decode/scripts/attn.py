import time, torch, sys
from llmbin.kernels.cpu.build import load_extension
load_extension()
torch.set_num_threads(1)
op = torch.ops.llmbin_cpu.decode_attention
for L, valid, H, G in [(256, 80, 3, 3), (256, 200, 3, 3), (1024, 600, 2, 6)]:
    q = torch.randn(1, H, G, 64); k = torch.randn(1, H, L, 64); v = torch.randn(1, H, L, 64)
    mask = torch.zeros(1, 1, 1, L, dtype=torch.bool); mask[..., :valid] = True
    for _ in range(100): op(q, k, v, mask, 0.125)
    t = time.perf_counter()
    for _ in range(2000): op(q, k, v, mask, 0.125)
    dt = (time.perf_counter() - t) / 2000
    ref = torch.nn.functional.scaled_dot_product_attention(q.repeat_interleave(1, 1).reshape(1, H * G, 1, 64), k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask, scale=0.125)
    err = (op(q, k, v, mask, 0.125).reshape(1, H * G, 1, 64) - ref).abs().max().item()
    print(f"{sys.argv[1]} L={L} valid={valid} H={H} G={G}: {dt * 1e6:.2f} us/call, max err {err:.2e}")
