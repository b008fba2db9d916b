"""siloguard.clients"""
