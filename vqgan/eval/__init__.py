"""Evaluation: reconstruction metrics, FID/KID, the results table and the report's plots."""
