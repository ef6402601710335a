-- Runs once, on the first start of the postgres service: MLflow's database beside Prefect's.
CREATE DATABASE mlflow;
