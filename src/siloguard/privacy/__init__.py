"""siloguard.privacy"""
