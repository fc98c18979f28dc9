"""The `llmbin` command group; each command lives in its own module of this package."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="llmbin")
@click.option("--offline", is_flag=True, help="Never reach the Hugging Face hub; fail fast naming what is missing.")
def main(offline):
    """llmbin: compress Hugging Face causal LMs to 1-2 bits per weight, store them packed, score and run them.

    \b
    llmbin quantize smollm2-135m --method ptq161 --dataset text.txt -o smol-1.61bit
    llmbin eval smol-1.61bit --ppl eval.txt
    llmbin inspect smol-1.61bit
    """
    if offline:
        import os

        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "1"
        import huggingface_hub.constants  # read its environment at import: set the flag it already holds

        huggingface_hub.constants.HF_HUB_OFFLINE = True
