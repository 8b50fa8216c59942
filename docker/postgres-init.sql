-- Run once by the postgres image on a new volume (docker-entrypoint-initdb.d). The results
-- store gets POSTGRES_DB (detbench); MLflow its own database: both have a table named "metrics".
CREATE DATABASE mlflow;
