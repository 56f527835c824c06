"""Model stage: member networks, the model package, the ensemble and its stackers."""
