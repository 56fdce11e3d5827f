"""Evaluation as in the papers: CLIP frame consistency and text alignment, CLIP model files, edit-set reports."""
