"""Model Spider: task and PTM tokens, the ranker, ranking losses, training and two-stage re-ranking."""
