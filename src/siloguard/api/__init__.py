"""siloguard.api"""
