"""siloguard.federation"""
