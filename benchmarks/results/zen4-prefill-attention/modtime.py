import time, torch, transformers, llmbin, collections
torch.set_num_threads(2)
packed = transformers.AutoModelForCausalLM.from_pretrained("/tmp/s45/smol-ptq161").eval()
x = torch.randint(0, 49000, (4, 512), generator=torch.Generator().manual_seed(0))
acc = collections.defaultdict(float); t0 = {}
def pre(name):
    def f(m, a): t0[name] = time.perf_counter()
    return f
def post(name):
    def f(m, a, o): acc[name.split(".")[-1] if "layers" in name else name] += time.perf_counter() - t0[name]
    return f
for n, m in packed.named_modules():
    if len(list(m.children())) == 0 or n.endswith("self_attn") or n.endswith("mlp"):
        m.register_forward_pre_hook(pre(n)); m.register_forward_hook(post(n))
with torch.no_grad():
    packed(input_ids=x, use_cache=False)
    acc.clear()
    t = time.perf_counter()
    for _ in range(2): packed(input_ids=x, use_cache=False)
    tot = (time.perf_counter() - t) / 2
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
    print(f"{k:30s} {v/2:.3f}")
print("total", round(tot, 3))
print({n: type(m).__name__ for n, m in packed.named_modules() if n in ("lm_head", "model.embed_tokens")})
