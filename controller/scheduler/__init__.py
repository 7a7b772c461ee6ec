"""Periodic work of the controller: the scheduler (``engine``) and the jobs registered on it (``jobs``)."""
