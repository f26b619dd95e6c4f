"""SQLite connection settings for Airflow's metadata DB when several ``airflow dags test``
processes share it (``make demo`` runs the DAGs of different dates side by side).

Airflow reads them by import path (``[database] sql_alchemy_connect_args``): a writer that finds
the database locked waits up to ``timeout`` seconds instead of failing at once.
"""

SQLITE_CONNECT_ARGS = {"timeout": 120}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 120}
