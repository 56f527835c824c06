"""Training: rebuild the models the app uses (MONAI-based)."""
