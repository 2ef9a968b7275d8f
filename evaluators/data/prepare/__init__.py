"""evaluators/data/prepare"""
