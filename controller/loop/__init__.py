"""The closed loop: drift event -> retrain or re-optimize job (``retrain``) -> canary rollout of a better
result (``promotion``)."""
