"""The gate stage: champion / challenger on the Model Registry (``thinkflow.gate.stage``)."""
