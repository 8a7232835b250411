"""All SQL lives here (docs/architecture.md rule 1): models, engine, repositories."""
