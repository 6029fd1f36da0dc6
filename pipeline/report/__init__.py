"""Reports on committed output: the dataset card, figures, statistics, method evaluation."""
