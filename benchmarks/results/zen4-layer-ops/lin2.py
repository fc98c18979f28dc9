import time, torch, transformers, statistics, llmbin
torch.set_num_threads(2)
m = transformers.AutoModelForCausalLM.from_pretrained("/tmp/s45/smol-ptq161").eval()
tot = 0
with torch.inference_mode():
  for i, L in enumerate(m.model.layers):
    row = []
    for name in ("q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"):
        mod = getattr(L.self_attn, name, None) or getattr(L.mlp, name)
        x = torch.randn(1, 64, mod.in_features)
        for _ in range(3): mod(x)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10): mod(x)
            ts.append((time.perf_counter() - t) / 10)
        row.append(statistics.median(ts) * 1e6); tot += row[-1]
    print(i, [round(v) for v in row], {k: tuple(v.shape) for k, v in L.mlp.gate_proj.named_buffers()} if i < 2 else "")
print("total ms", tot / 1e3)
