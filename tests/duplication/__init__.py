"""Tests of the duplication suite (paper Table 2): data, training/resume, evaluation, runner, report."""
