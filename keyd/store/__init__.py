"""All SQL lives here (STYLE.md rule 1): models, engine, repositories."""
