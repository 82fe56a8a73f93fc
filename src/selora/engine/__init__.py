"""The training and sampling engine (``selora train`` / ``selora sample``)."""
