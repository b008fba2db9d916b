"""Precision-marketing maths a store runs on its own gated data: no store access in here.

* :mod:`~siloguard.marketing.clv`: customer lifetime value (BG/NBD + Gamma-Gamma);
* :mod:`~siloguard.marketing.experiment`: control groups and campaign uplift with intervals;
* :mod:`~siloguard.marketing.profiles`: spending tier, lifecycle stage, interests, habits.

The store site (:mod:`siloguard.clients.marketing`) passes its data through its gate and
hands the gated frames to these functions; nothing here opens a file, a key or a database.
"""
