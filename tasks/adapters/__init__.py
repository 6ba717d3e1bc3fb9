"""Framework and outside-service adapters (MLflow, Ray Train and Ray Data, DeepSpeed, LanceDB, annotator clients,
baselines), used by the stages and the service; they import only each other and `onegen_core`."""
