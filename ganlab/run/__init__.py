"""The training run's named parts; the loop itself is ganlab.train (see its docstring for the map)."""
