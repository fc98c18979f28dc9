"""`llmbin replay-check`: does the layer-by-layer replay reproduce the model's own forward?"""
from __future__ import annotations

import click
import torch

from ..calibrate.replay import replay_check
from ..data import calibration_windows, load_text, token_stream
from ..errors import LlmbinError
from ..models.loading import load_model
from .errors import friendly_errors


@click.command(name="replay-check")
@click.argument("model")
@click.option("--dataset", default=None, help="Text to run (as for quantize); default: random token ids.")
@click.option("--nsamples", type=int, default=4, show_default=True, help="Windows.")
@click.option("--seqlen", type=int, default=128, show_default=True, help="Tokens per window.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True, help="Windows per forward call.")
@click.option("--tolerance", type=float, default=1e-5, show_default=True, help="Largest accepted |difference| (float32).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
@friendly_errors
def replay_check_command(model, dataset, nsamples, seqlen, seed, batch_size, tolerance, trust_remote_code):
    """Check that layer-by-layer calibration replays MODEL's own forward (float32, no quantization).

    Every decoder layer's replayed output and the logits computed from the last one are compared with an
    ordinary forward pass of the model; exit status 2 when any differs by more than --tolerance.
    """
    m, tokenizer = load_model(model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if dataset:
        ids = calibration_windows(token_stream(tokenizer, load_text(dataset, split="calibration")), nsamples, seqlen, seed)
    else:
        vocab = m.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))
    report = replay_check(m, ids, batch_size)
    for i, err in enumerate(report["layers"]):
        click.echo(f"layer {i:3d}: max |replay - model| = {err:.3g}")
    click.echo(f"logits   : max |replay - model| = {report['logits']:.3g}")
    if report["max_abs"] > tolerance:
        raise LlmbinError(f"the layer-by-layer replay differs from {model}'s own forward by {report['max_abs']:.3g} "
                          f"(> {tolerance}); calibration of this architecture would be wrong, please report it")
    click.echo(f"ok: replay equals the model's forward within {tolerance}")
