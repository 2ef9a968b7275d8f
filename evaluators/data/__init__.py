"""evaluators/data"""
