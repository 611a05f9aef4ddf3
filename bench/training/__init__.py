"""The common training runner: every study that trains models (the duplication task, the quality
ablations on real text) is a plan of training, evaluation and analysis points run by `runner`,
checkpointed by `checkpoint`, recorded in the harness's store and reported by its kind's report."""
