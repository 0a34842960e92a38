"""Airflow task builders of the DAG files: the stage tasks (`stages`) and the control tasks
around them (`control`). Only the DAG files import this package."""
