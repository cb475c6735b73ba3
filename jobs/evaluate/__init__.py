"""``fakescan evaluate``: the robustness protocol (``job``) and the tables it writes (``outputs``)."""
