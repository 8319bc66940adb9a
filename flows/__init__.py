"""Prefect flows and deployments over medgen.stages (thin wrappers: no ML logic here)."""
