"""``fakescan scan``: the job (``job``) and its own figures (``metrics``)."""
