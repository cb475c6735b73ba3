"""``fakescan train``: the shared job (``common``), each detector's loop (``hybrid``, ``ensemble``) and the
real faces to train on (``faces``)."""
