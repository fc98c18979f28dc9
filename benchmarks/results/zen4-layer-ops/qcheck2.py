import sys, torch, transformers, llmbin
torch.set_num_threads(2)
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
fused = {mod: type(mod) for mod in m.modules() if type(mod).__name__.startswith("Fused")}
plain = {mod: cls.__mro__[2] for mod, cls in fused.items()}
def setc(pred):
    for mod in fused: mod.__class__ = fused[mod] if pred(fused[mod].__name__) else plain[mod]
ids = torch.randint(0, 30000, (1, 200), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    setc(lambda n: False); base = m(ids).logits
    for label, pred in [("norm", lambda n: "Norm" in n), ("mlp", lambda n: "MLP" in n), ("attn", lambda n: "Attention" in n)]:
        setc(pred); d = (m(ids).logits - base).abs().max().item(); print(label, d)
    setc(lambda n: False); impl = m.config._attn_implementation; m.config._attn_implementation = "sdpa"
    print("sdpa vs llmbin attention (no fused):", (m(ids).logits - base).abs().max().item())
    m.config._attn_implementation = impl
    x = torch.randn(1, 200, m.config.hidden_size) * 100
    n = m.model.layers[3].input_layernorm
    setc(lambda n: True); a = n(x); setc(lambda n: False); b = n(x)
    print("norm op vs torch on x*100:", (a - b).abs().max().item(), b.abs().max().item())
