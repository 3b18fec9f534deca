"""The pgtenancy demo on the Chinook sample database (``make demo``)."""
