"""Modal screens: the cluster picker and the path prompt."""
