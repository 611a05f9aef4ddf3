"""What a run of each kind of suite does, behind one small ask/tell interface (`bench.plans.base.Plan`):
a grid hands out all its points at once, a capacity search the next probe of each configuration,
a training plan its trainings, then the evaluations and analyses of the models that finished."""
