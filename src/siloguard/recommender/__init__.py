"""siloguard.recommender"""
