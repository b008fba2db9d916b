"""siloguard.audit"""
