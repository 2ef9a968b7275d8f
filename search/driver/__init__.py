"""search/driver"""
