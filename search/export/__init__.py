"""search/export"""
