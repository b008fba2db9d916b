"""GDPR/CCPA compliance checks: rules as data, run as ``siloguard check`` and as the
federation's pre-flight gate.

Modules: ``rules`` (the rule files in ``policies/rules/``), ``records`` (processing
activities, DPIAs, transfers, adequacy and sensitive categories in ``policies/records/``),
``context`` (what the rules run against, and the clocks), ``checks`` (one function per
check), ``engine`` (evaluation, audit events, :func:`~siloguard.compliance.engine.preflight`),
``ropa`` (the Art. 30 document), ``retention`` (deleting rows past retention through the
gate), ``cli`` (``siloguard check`` and ``siloguard retention``).
"""
