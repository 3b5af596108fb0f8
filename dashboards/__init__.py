"""Dashboards: Grafana boards generated from the catalog, built to JSON and pushed through Grafana's API."""
