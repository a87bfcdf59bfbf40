"""Many jobs: the sweep plan, job directory names, override quoting and the end-of-sweep report."""
