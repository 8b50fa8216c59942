"""Scoring a trained detector: COCO evaluation, loss diagnostics, speed figures and the isolated speed
phase.
"""
