"""What the user sees: Pareto fronts and paper-style tables, built only from stored results."""
