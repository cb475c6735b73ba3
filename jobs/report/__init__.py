"""``fakescan report``: what a page shows (``data``), how it looks (``html``), and its pictures (``media``)."""
