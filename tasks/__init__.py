"""The pipeline around the method, by role: the six DVC stage modules directly here (each reads params, calls
`onegen_core` and the adapters, writes its outputs; `stage_common` is their command-line kit), framework adapters
in `adapters/`, reports in `report/`, the model service in `serving/`. Nothing imports a stage module."""
