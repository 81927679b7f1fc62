"""Process runtime shared by the converter, the centroid calculator and the live pipeline.

* :mod:`.shm`: shared-memory slot rings (numpy arrays placed in slots, no pipe copies);
* :mod:`.guard`: the orphan guard (a worker or stage ends when its parent is gone);
* :mod:`.tuning`: process tuning (garbage collector, glibc heap, SIGTERM) inside a context
  manager that undoes it;
* :mod:`.pool`: the ordered worker pool (tasks in shared-memory slots, results in order).

This package imports nothing else from ``tango_tpx``: every other layer may use it.
"""
