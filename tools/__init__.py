"""Developer and test tooling of the nkframe repository; not part of the installed package.

Run from the checkout's root (``python -m tools.vm ...``) or with it on ``sys.path`` (pytest
adds it: ``pythonpath`` in pyproject.toml).

* :mod:`tools.vm`: boots a Debian kernel in QEMU with virtme-ng and runs the test tiers (or any
  command) inside it; ``make test-vm`` and ``tests/run-tiers`` use it, ``nkframe demo --vm`` too.
* :mod:`tools.leasesource`: ``netdevsim.ko`` built for a 7.x guest kernel (the vm-next tier's
  lease source).
* :mod:`tools.kobjects`: a census of the kernel's BPF objects by id (the tests' leak checks).
* ``vm_guest.py``, ``qemu_afxdp.py``, ``compat_table.py``: scripts (run by path): a QEMU guest
  on an AF_XDP endpoint, the af-xdp QEMU build, the compatibility table in docs/compat.md.
"""
