"""The synthetic-data pipeline, one concern per module (public facade: ``cogenesis.data.synthesis``)."""
