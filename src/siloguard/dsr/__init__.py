"""Data-subject requests: legal clocks, the request state machine, erasure across stores.

:mod:`~siloguard.dsr.service` keeps requests in the database, :mod:`~siloguard.dsr.clocks`
computes their GDPR/CCPA deadlines, :mod:`~siloguard.dsr.sync` is a store's side of an
erasure (``siloguard store sync``) and :mod:`~siloguard.dsr.access` answers access requests
through each store's gate. The HTTP face is :mod:`siloguard.api`.
"""
