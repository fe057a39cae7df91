"""Static HTML views of results: per-query rankings of one result or two compared (``page``)."""
