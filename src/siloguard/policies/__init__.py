"""siloguard.policies"""
