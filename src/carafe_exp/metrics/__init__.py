"""Evaluation metrics: COCO AP, top-k accuracy and friends."""
