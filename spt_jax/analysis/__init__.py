"""Analysis of finished runs: the paper's metrics, overfitting scaling laws, cost and data similarity."""
