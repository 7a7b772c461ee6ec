"""Hyperparameter search for the factory (the ``search`` stage, ``stages/search.py``).

space.py    the recipe's ``search:`` section: space, metric, constraints, budget, sampler, pruner
storage.py  where the optuna study lives (beside the controller's database) and what it is called
trial.py    one trial as a picklable function: train, report validation loss (pruning), build, evaluate
study.py    the ask-and-tell loop on a task runner (parallel trials), resuming, the best feasible trial
table.py    the trial table and the summary (stage metrics, job summary, lineage)
best.py     ``best_config.json`` and how train-student / finetune / quantize apply it
"""
