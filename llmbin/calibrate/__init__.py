"""Layer-by-layer calibration: capture each decoder layer's call, let the method quantize it on the outputs of the
already-quantized layers before it, and propagate; then the embeddings/head stage. Also the replay check."""
