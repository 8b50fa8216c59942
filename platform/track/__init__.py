"""Tracking results: the SQL results store, MLflow runs, and reconciling MLflow with the store.
"""
