"""DVC stage glue: one thin module per stage, reading params.yaml and calling onegen_core."""
