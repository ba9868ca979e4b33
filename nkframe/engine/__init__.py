"""The endpoint lifecycle engine.

========================  ===================================================================
module                    holds
========================  ===================================================================
``core``                  :class:`Engine`: add/remove endpoints, read them back, the uplink
``chains``                mechanism selection, collecting/ordering/loading/attaching programs
``staging``               switch_mechanism and upgrade: stage, cut over, settle
``reconcile``             reconcile/gc after crashes, ``reset_node``
========================  ===================================================================

Users import from here: ``from nkframe.engine import Engine``.
"""

from nkframe.engine.chains import list_attached, order_chain, programs_by_spec
from nkframe.engine.core import Engine
from nkframe.engine.reconcile import ReconcileReport
from nkframe.engine.staging import STAGING_PREFIX

__all__ = ["Engine", "ReconcileReport", "STAGING_PREFIX", "list_attached", "order_chain", "programs_by_spec"]
