"""Prefect flows that run the DVC pipeline (`full_repro`) and the λr ablation (`lambda_sweep`).

The flows add ordering, retries, a UI and deployments; every stage still runs through DVC, so `dvc.lock`
and DVC's cache decide what is up to date.
"""
