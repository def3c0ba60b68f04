"""Drawing widgets: they format view data they are handed and compute nothing else."""
