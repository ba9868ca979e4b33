"""Test inputs shaped like what virt-launcher sends a hook sidecar (used by the tests only).

virt-launcher marshals its DomainSpec with Go's ``encoding/xml`` (``MarshalIndent`` with a tab):
attributes in double quotes, every element written as ``<x ...></x>`` (never ``<x/>``), devices
named after VMI devices carry ``<alias name="ua-NAME">``, the QEMU namespace is declared on
``<domain>``.  An interface of a binding with ``domainAttachmentType: tap`` is an ``ethernet``
interface with ``<target dev="tap0" managed="no">``; a binding with only a sidecar gets none.
"""

from __future__ import annotations

import json

UID = "5f0c8d3e-2a41-4c77-9a0e-6f1b2c3d4e5f"


def placeholder_interface(name: str, *, mac: str | None = None, pci: str | None = None,
                          target: str = "tap0") -> str:
    lines = ['\t\t<interface type="ethernet">',
             f'\t\t\t<target dev="{target}" managed="no"></target>',
             '\t\t\t<model type="virtio-non-transitional"></model>']
    if mac:
        lines.append(f'\t\t\t<mac address="{mac}"></mac>')
    lines.append('\t\t\t<mtu size="1500"></mtu>')
    lines.append(f'\t\t\t<alias name="ua-{name}"></alias>')
    if pci:
        lines.append(pci)
    lines.append('\t\t\t<rom enabled="no"></rom>')
    lines.append("\t\t</interface>")
    return "\n".join(lines)


def launcher_domain(*, interfaces: str = "", name: str = "default_vmi-afxdp",
                    boot: dict | None = None, commandline: str | None = None) -> bytes:
    """A domain as virt-launcher would define it.  ``interfaces`` is inserted first in
    ``<devices>``.  ``boot`` (keys emulator, kernel, initrd, cmdline, serial) makes a domain that
    boots here: type qemu (TCG), direct kernel boot, the console on a file, no disk or display
    (those would need the launcher pod's paths)."""
    dev = []
    if boot:
        dev.append(f'\t\t<emulator>{boot["emulator"]}</emulator>')
    if interfaces:
        dev.append(interfaces)
    dev += ['\t\t<channel type="unix">',
            '\t\t\t<target name="org.qemu.guest_agent.0" type="virtio"></target>',
            '\t\t</channel>',
            '\t\t<controller type="usb" index="0" model="none"></controller>',
            '\t\t<controller type="virtio-serial" index="0" model="virtio-non-transitional"></controller>',
            '\t\t<memballoon model="virtio-non-transitional">',
            '\t\t\t<stats period="10"></stats>',
            '\t\t</memballoon>']
    if boot:
        dev += ['\t\t<serial type="file">',
                f'\t\t\t<source path="{boot["serial"]}"></source>',
                '\t\t\t<target port="0"></target>',
                '\t\t</serial>',
                '\t\t<rng model="virtio-non-transitional">',
                '\t\t\t<backend model="random">/dev/urandom</backend>',
                '\t\t</rng>']
    else:
        dev += ['\t\t<video>',
                '\t\t\t<model type="vga" heads="1" vram="16384"></model>',
                '\t\t</video>',
                '\t\t<graphics type="vnc">',
                f'\t\t\t<listen type="socket" socket="/var/run/kubevirt-private/{UID}/virt-vnc"></listen>',
                '\t\t</graphics>',
                '\t\t<disk device="disk" type="file" model="virtio-non-transitional">',
                '\t\t\t<source file="/var/run/kubevirt-ephemeral-disks/disk-data/containerdisk/disk.qcow2"></source>',
                '\t\t\t<target bus="virtio" dev="vda"></target>',
                '\t\t\t<driver cache="none" error_policy="stop" name="qemu" type="qcow2" discard="unmap"></driver>',
                '\t\t\t<alias name="ua-containerdisk"></alias>',
                '\t\t\t<backingStore type="file">',
                '\t\t\t\t<format type="raw"></format>',
                '\t\t\t\t<source file="/var/run/kubevirt/container-disks/disk_0.img"></source>',
                '\t\t\t</backingStore>',
                '\t\t</disk>',
                '\t\t<serial type="unix">',
                '\t\t\t<target port="0"></target>',
                f'\t\t\t<source mode="bind" path="/var/run/kubevirt-private/{UID}/virt-serial0"></source>',
                '\t\t</serial>',
                '\t\t<console type="pty">',
                '\t\t\t<target type="serial" port="0"></target>',
                '\t\t</console>']
    if boot:
        os_el = ['\t<os>',
                 '\t\t<type arch="x86_64" machine="q35">hvm</type>',
                 f'\t\t<kernel>{boot["kernel"]}</kernel>',
                 f'\t\t<initrd>{boot["initrd"]}</initrd>',
                 f'\t\t<cmdline>{boot["cmdline"]}</cmdline>',
                 '\t\t<smbios mode="sysinfo"></smbios>',
                 '\t</os>']
    else:
        os_el = ['\t<os>',
                 '\t\t<type arch="x86_64" machine="q35">hvm</type>',
                 '\t\t<smbios mode="sysinfo"></smbios>',
                 '\t</os>']
    lines = [f'<domain type="{"qemu" if boot else "kvm"}" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">',
             f'\t<name>{name}</name>',
             f'\t<uuid>{UID}</uuid>',
             f'\t<memory unit="b">{256 * 1024 * 1024}</memory>',
             *os_el,
             '\t<sysinfo type="smbios">',
             '\t\t<system>',
             f'\t\t\t<entry name="uuid">{UID}</entry>',
             '\t\t\t<entry name="manufacturer">KubeVirt</entry>',
             '\t\t\t<entry name="family">KubeVirt</entry>',
             '\t\t\t<entry name="product">None</entry>',
             '\t\t</system>',
             '\t</sysinfo>',
             '\t<devices>',
             *dev,
             '\t</devices>',
             '\t<clock offset="utc">',
             '\t\t<timer name="rtc" tickpolicy="catchup"></timer>',
             '\t\t<timer name="pit" tickpolicy="delay"></timer>',
             '\t\t<timer name="hpet" present="no"></timer>',
             '\t</clock>',
             '\t<metadata>',
             '\t\t<kubevirt xmlns="http://kubevirt.io">',
             f'\t\t\t<uid>{UID}</uid>',
             '\t\t\t<graceperiod>',
             '\t\t\t\t<deletionGracePeriodSeconds>30</deletionGracePeriodSeconds>',
             '\t\t\t</graceperiod>',
             '\t\t</kubevirt>',
             '\t</metadata>',
             '\t<features>',
             '\t\t<acpi></acpi>',
             '\t</features>',
             '\t<cpu mode="maximum"></cpu>' if boot else '\t<cpu mode="host-model">',
             ]
    if not boot:
        lines += ['\t\t<topology sockets="1" cores="1" threads="1"></topology>', '\t</cpu>']
    lines += ['\t<vcpu placement="static">1</vcpu>']
    if commandline is not None:
        lines.append(commandline)
    lines.append('</domain>')
    return ("\n".join(lines)).encode()


def vmi(interfaces: list[dict], networks: list[dict], *, statuses: list[dict] | None = None,
        name: str = "vmi-afxdp") -> bytes:
    """A VirtualMachineInstance as virt-launcher marshals it (JSON)."""
    doc = {
        "kind": "VirtualMachineInstance",
        "apiVersion": "kubevirt.io/v1",
        "metadata": {"name": name, "namespace": "default", "uid": UID},
        "spec": {
            "domain": {
                "devices": {"interfaces": interfaces},
                "resources": {"requests": {"memory": "256Mi"}},
            },
            "networks": networks,
        },
        "status": {"interfaces": statuses or []},
    }
    return json.dumps(doc).encode()
