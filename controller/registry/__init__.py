"""The model registry: content-addressed blobs of model variants and their transfer to agents."""
