"""What a QEMU binary can do for a VM endpoint, and QEMU ``af-xdp`` netdev arguments checked
against it.

:func:`inspect` asks the binary itself (``-version``, ``-netdev help``); :class:`AfXdpNetdev`
holds one ``-netdev af-xdp`` argument set and renders it; :func:`check_af_xdp` validates a set
against a QEMU's version and backends, with the rules QEMU applies (net/af-xdp.c, qapi/net.json):

* the af-xdp netdev exists since QEMU 8.2, and only in builds linked with libxdp (none of
  Debian's are);
* ``map-path`` and ``map-start-index`` exist since 10.1;
* ``inhibit=on`` needs ``map-path`` or ``sock-fds``, those two need ``inhibit=on`` and exclude
  each other; ``map-start-index`` needs ``map-path``; ``sock-fds`` names one fd per queue;
* ``mode`` is ``native`` or ``skb`` (the attach mode); copy mode is ``force-copy=on``.

A QEMU that lacks the backend or an option raises :class:`~nkframe.errors.NotSupported`; an
argument set that no QEMU accepts raises :class:`~nkframe.errors.InvalidSpec`.
"""

from __future__ import annotations

import os
import re
import subprocess

import attrs

from nkframe.errors import InvalidSpec, NotSupported

Version = tuple[int, int, int]

AF_XDP_SINCE: Version = (8, 2, 0)
MAP_PATH_SINCE: Version = (10, 1, 0)
MODES = ("native", "skb")
IFNAMSIZ = 16
_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")


def _v(version: Version) -> str:
    return ".".join(map(str, version))


def parse_version(text: str) -> Version:
    """(major, minor, micro) from ``qemu-system-* -version`` output."""
    m = _VERSION_RE.search(text)
    if not m:
        raise InvalidSpec(f"not QEMU -version output: {text.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_netdev_help(text: str) -> frozenset[str]:
    """The backend names ``-netdev help`` lists (one per line after a header line)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.endswith(":") and re.fullmatch(r"[a-z0-9-]+", line):
            names.add(line)
    return frozenset(names)


@attrs.frozen
class QemuInfo:
    """What one QEMU binary said about itself."""

    path: str
    version: Version
    netdevs: frozenset[str]
    version_text: str = ""

    @property
    def af_xdp(self) -> bool:
        return "af-xdp" in self.netdevs

    @property
    def map_path(self) -> bool:
        return self.af_xdp and self.version >= MAP_PATH_SINCE

    def describe(self) -> str:
        return f"QEMU {_v(self.version)} at {self.path}"


def inspect(path: str, *, timeout: float = 30.0) -> QemuInfo:
    """Ask the QEMU binary at ``path`` for its version and its netdev backends."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise InvalidSpec(f"{path!r} is not an executable file (name a qemu-system-* binary)")

    def ask(*args: str) -> str:
        try:
            r = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InvalidSpec(f"{path} {' '.join(args)} failed: {e}") from e
        if r.returncode != 0:
            raise InvalidSpec(f"{path} {' '.join(args)} failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip()[:300]}")
        return r.stdout

    text = ask("-version")
    version = parse_version(text)
    netdevs = parse_netdev_help(ask("-netdev", "help"))
    return QemuInfo(path, version, netdevs, text.strip().splitlines()[0])


# --- argument sets ----------------------------------------------------------------------------

def _escape(value: str) -> str:
    """QEMU's option syntax: a comma inside a value is doubled."""
    return value.replace(",", ",,")


def split_options(text: str) -> list[tuple[str, str | None]]:
    """``a=1,b,c=x,,y`` -> [("a", "1"), ("b", None), ("c", "x,y")] (QEMU's ``,,`` escape)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(text[i])
        i += 1
    parts.append("".join(cur))
    out: list[tuple[str, str | None]] = []
    for p in parts:
        k, eq, v = p.partition("=")
        out.append((k, v if eq else None))
    return out


def _on_off(key: str, value: str | None) -> bool:
    if value in (None, "on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise InvalidSpec(f"af-xdp option {key}={value!r}: expected on or off")


def _int(key: str, value: str | None) -> int:
    try:
        return int(value or "")
    except ValueError:
        raise InvalidSpec(f"af-xdp option {key}={value!r}: expected an integer") from None


@attrs.frozen
class AfXdpNetdev:
    """One ``-netdev af-xdp,...`` argument set (QEMU's option names, Python spelling)."""

    ifname: str
    id: str = "n0"
    mode: str | None = None
    force_copy: bool = False
    queues: int = 1
    start_queue: int = 0
    inhibit: bool = False
    map_path: str | None = None
    map_start_index: int | None = None
    sock_fds: tuple[int, ...] = ()

    _KEYS = ("id", "ifname", "mode", "force-copy", "queues", "start-queue", "inhibit",
             "map-path", "map-start-index", "sock-fds")

    def problems(self) -> list[str]:
        """Why no QEMU accepts this set (empty when it is well formed)."""
        out = []
        if not _ID_RE.fullmatch(self.id):
            out.append(f"id {self.id!r} is not a QEMU id (a letter, then letters, digits, _ . -)")
        if not self.ifname or len(self.ifname) >= IFNAMSIZ or "/" in self.ifname or \
                any(c.isspace() for c in self.ifname):
            out.append(f"ifname {self.ifname!r} is not an interface name")
        if self.mode is not None and self.mode not in MODES:
            hint = " (copy mode is force-copy=on)" if self.mode == "copy" else ""
            out.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}{hint}")
        if self.queues < 1:
            out.append(f"queues={self.queues}: at least 1")
        if self.start_queue < 0:
            out.append(f"start-queue={self.start_queue}: cannot be negative")
        if self.inhibit and not (self.map_path or self.sock_fds):
            out.append("inhibit=on needs map-path or sock-fds")
        if (self.map_path or self.sock_fds) and not self.inhibit:
            out.append("map-path and sock-fds need inhibit=on")
        if self.map_path and self.sock_fds:
            out.append("map-path and sock-fds exclude each other")
        if self.map_start_index is not None:
            if not self.map_path:
                out.append("map-start-index needs map-path")
            if self.map_start_index < 0:
                out.append(f"map-start-index={self.map_start_index}: cannot be negative")
        if self.sock_fds:
            if len(self.sock_fds) != self.queues:
                out.append(f"sock-fds names {len(self.sock_fds)} fds for {self.queues} queues "
                           "(one per queue)")
            if any(fd < 0 for fd in self.sock_fds):
                out.append("sock-fds: file descriptors cannot be negative")
        return out

    def validate(self) -> AfXdpNetdev:
        problems = self.problems()
        if problems:
            raise InvalidSpec(f"-netdev af-xdp for {self.ifname!r}: {'; '.join(problems)}")
        return self

    def needs(self) -> Version:
        """The oldest QEMU that accepts these options."""
        return MAP_PATH_SINCE if (self.map_path or self.map_start_index is not None) else AF_XDP_SINCE

    def netdev(self) -> str:
        """The ``-netdev`` value (QEMU's option syntax, commas in values escaped)."""
        parts = ["af-xdp", f"id={self.id}", f"ifname={_escape(self.ifname)}"]
        if self.mode:
            parts.append(f"mode={self.mode}")
        if self.force_copy:
            parts.append("force-copy=on")
        parts += [f"queues={self.queues}", f"start-queue={self.start_queue}"]
        if self.inhibit:
            parts.append("inhibit=on")
        if self.map_path:
            parts.append(f"map-path={_escape(self.map_path)}")
        if self.map_start_index is not None:
            parts.append(f"map-start-index={self.map_start_index}")
        if self.sock_fds:
            parts.append("sock-fds=" + ":".join(map(str, self.sock_fds)))
        return ",".join(parts)

    def device(self, mac: str | None = None, model: str = "virtio-net-pci") -> str:
        """The matching ``-device`` value (multiqueue turned on for queues > 1)."""
        parts = [model, f"netdev={self.id}"]
        if mac is not None:
            if not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
                raise InvalidSpec(f"mac {mac!r} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)")
            parts.append(f"mac={mac.lower()}")
        if self.queues > 1:
            parts += ["mq=on", f"vectors={2 * self.queues + 2}"]
        return ",".join(parts)

    def argv(self, mac: str | None = None) -> list[str]:
        return ["-netdev", self.validate().netdev(), "-device", self.device(mac)]

    @classmethod
    def parse(cls, text: str) -> AfXdpNetdev:
        """From a ``-netdev`` value (``af-xdp,id=...``); the set is validated."""
        opts = split_options(text)
        if not opts or opts[0] != ("af-xdp", None):
            raise InvalidSpec(f"not an af-xdp netdev: {text[:200]!r}")
        kw: dict = {}
        seen = set()
        for key, value in opts[1:]:
            if key in seen:
                raise InvalidSpec(f"af-xdp option {key} given twice")
            seen.add(key)
            if key not in cls._KEYS:
                raise InvalidSpec(f"af-xdp has no option {key!r} (it has {', '.join(cls._KEYS)})")
            if key in ("force-copy", "inhibit"):
                kw[key.replace("-", "_")] = _on_off(key, value)
            elif key in ("queues", "start-queue", "map-start-index"):
                kw[key.replace("-", "_")] = _int(key, value)
            elif key == "sock-fds":
                kw["sock_fds"] = tuple(_int(key, v) for v in (value or "").split(":"))
            elif value is None:
                raise InvalidSpec(f"af-xdp option {key} needs a value")
            else:
                kw[key.replace("-", "_")] = value
        if "ifname" not in kw:
            raise InvalidSpec("af-xdp needs ifname")
        return cls(**kw).validate()


def check_af_xdp(qemu: QemuInfo | Version, netdev: AfXdpNetdev) -> None:
    """Raise unless this QEMU (or a QEMU of this version with the backend) accepts ``netdev``.

    :class:`NotSupported` when the QEMU lacks the backend or an option the set uses (the reason
    says which QEMU would do, or the sock-fds alternative); :class:`InvalidSpec` when no QEMU
    accepts the set.
    """
    netdev.validate()
    info = qemu if isinstance(qemu, QemuInfo) else None
    version = info.version if info else qemu
    what = info.describe() if info else f"QEMU {_v(version)}"
    if version < AF_XDP_SINCE:
        raise NotSupported("qemu af-xdp", f"{what} predates the af-xdp netdev (QEMU >= "
                           f"{_v(AF_XDP_SINCE)} built with libxdp has it)")
    if info is not None and not info.af_xdp:
        raise NotSupported("qemu af-xdp", f"{what} was built without the af-xdp netdev (its "
                           "-netdev help does not list it; Debian's builds do not link libxdp): "
                           "use a QEMU configured with --enable-af-xdp, e.g. 'make qemu-afxdp'")
    if version < netdev.needs():
        raise NotSupported("qemu af-xdp map-path", f"{what} has no map-path/map-start-index "
                           f"(QEMU >= {_v(MAP_PATH_SINCE)}); with it, hand over sockets "
                           "through sock-fds instead")
