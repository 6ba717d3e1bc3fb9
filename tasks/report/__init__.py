"""Reports of a run, read from what the stages wrote: the evaluation report and the headline table."""
