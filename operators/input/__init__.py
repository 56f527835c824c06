"""Input stage: discovery, reading, selection, decoding on CPU and GPU, grey pixels, batches."""
