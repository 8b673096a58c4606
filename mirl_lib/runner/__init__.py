"""Floor 8: running the stage graph: each stage as a papermill notebook (or a process without
notebooks), the whole study behind ./run_all.sh."""
