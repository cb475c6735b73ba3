"""``fakescan serve``: the scan's stages behind HTTP on Ray Serve (``app``), one video per request (``pipeline``)."""
