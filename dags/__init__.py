"""Airflow DAG files (wiring only) and their shared helpers; importable as ``dags.*``."""
