"""Body-part identifier: MONAI Deploy application."""
