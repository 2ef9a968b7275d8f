"""search/pruning"""
