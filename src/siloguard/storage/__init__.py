"""siloguard.storage"""
