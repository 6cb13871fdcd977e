"""JobSink's data plane: one run of the Job's containers per event (docs/jobsink.md)."""
