"""Simulation engine: a Ray actor pool running many virtual clients against a virtual clock."""
