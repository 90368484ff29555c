"""Outpost: moves data from IoT sites to the cloud without losing it.

One namespace for the distribution ``outpost-iot`` (docs/decisions/0012-structure.md):
``outpost_iot.agent`` runs on the gateway, ``outpost_iot.collector`` in the cloud,
``outpost_iot.wire`` is the contract between them, ``outpost_iot.provisioning`` enrolls a
gateway; ``mqtt``, ``systemd`` and ``dev`` are shared helpers and the developer's tools.
"""
