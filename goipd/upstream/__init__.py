"""One module per upstream API; each exposes pure parsers and an async client."""
