"""host-local, in process: the reference IPAM plugin's allocation for the configurations whose
meaning is certain, without exec'ing the plugin.

Delegating IPAM means a process per ADD and DEL; for host-local that is a Go binary's start-up,
~5 ms of a CNI ADD on a quiet machine and far more with a dozen ADDs in flight.  When the
configuration names ``host-local`` (and CNI_PATH has it: it stays the authority), nkframe runs
host-local's own algorithm (containernetworking/plugins ``plugins/ipam/host-local``, unchanged
from v1.1.1 to v1.9) on host-local's own files, so addresses leased here and by the plugin itself
(another nkframe version, ``nkframe-cni`` run by hand, any plugin sharing the data directory) are
one pool and either side releases the other's:

* the store is ``<dataDir>/<network name>/`` (dataDir defaults to ``/var/lib/cni/networks``),
  locked with ``flock`` on its ``lock`` file, one file per leased address named by the address
  and holding ``<container id>\\r\\n<ifname>``, and ``last_reserved_ip.<range set index>``;
* each range set gives one address, round-robin from the last one reserved, skipping the range's
  gateway; an attachment holding an address in a range set already is refused ("duplicate
  allocation"); DEL removes every file naming the attachment (or, as host-local, the container
  id alone: files of host-local before 0.8);
* the ADD result: one address per range set with the range's prefix length and gateway, the
  configuration's routes, no DNS.

Everything else goes to the plugin, as before: requested addresses (``CNI_ARGS`` ``IP=``,
``args.cni.ips``, ``runtimeConfig.ips``/``ipRanges``), ``resolvConf``, CHECK, STATUS and GC, and
any configuration this module cannot read exactly as host-local does (keys it does not know,
a relative ``dataDir``, a range host-local refuses, IPv4-mapped IPv6): host-local's own error is
then the answer.  :func:`load` says which.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import stat
from collections.abc import Mapping

from nkframe.cni.errors import INTERNAL, CniError

PLUGIN = "host-local"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"

_IPAM_KEYS = frozenset({"type", "subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "dataDir", "resolvConf"})
_RANGE_KEYS = frozenset({"subnet", "rangeStart", "rangeEnd", "gateway"})
# Go's unicode.IsSpace, which strings.TrimSpace trims.
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


# store -> {path: ((inode, size, mtime, ctime, is a link), stripped content)} of its last walk
_CONTENTS: dict[str, dict[str, tuple]] = {}


class _Unsure(Exception):
    """The configuration is not one this module reads exactly as host-local: delegate."""


class Range:
    """One range of a range set, canonicalised as host-local does (addresses as integers)."""

    __slots__ = ("version", "net", "plen", "start", "end", "gateway")

    def __init__(self, doc: object):
        if not isinstance(doc, dict) or set(doc) - _RANGE_KEYS or not isinstance(doc.get("subnet"), str):
            raise _Unsure
        net = _network(doc["subnet"])
        if net.prefixlen > net.max_prefixlen - 2:
            raise _Unsure  # "too small to allocate from"
        self.version, self.net, self.plen = net.version, net, net.prefixlen
        first, last = int(net.network_address), int(net.broadcast_address)
        # (An empty string is no value to Go's net.IP, as a missing key.)
        self.gateway = _addr(doc["gateway"], net.version) if doc.get("gateway") not in (None, "") else first + 1
        self.start = self.end = None
        start = _addr(doc["rangeStart"], net.version) if doc.get("rangeStart") not in (None, "") else first + 1
        if not self.contains(start):
            raise _Unsure  # "RangeStart not in network"
        self.start = start
        end = (_addr(doc["rangeEnd"], net.version) if doc.get("rangeEnd") not in (None, "")
               else (last - 1 if net.version == 4 else last))
        if not self.contains(end) or end < start:
            raise _Unsure
        self.end = end

    def contains(self, ip: int, version: int | None = None) -> bool:
        if version is not None and version != self.version:
            return False
        if not int(self.net.network_address) <= ip <= int(self.net.broadcast_address):
            return False
        return (self.start is None or ip >= self.start) and (self.end is None or ip <= self.end)

    def __str__(self) -> str:
        return f"{_str(self.start, self.version)}-{_str(self.end, self.version)}"


class HostLocal:
    """One invocation's host-local: the canonical ranges, the store, the attachment."""

    def __init__(self, name: str, data_dir: str, ranges: list[list[Range]], routes: list[dict], version: str,
                 container_id: str, ifname: str):
        self.store = os.path.join(data_dir, name)
        self.ranges = ranges
        self.routes = routes
        self.version = version
        self.container_id = container_id
        self.ifname = ifname

    # -- the store ----------------------------------------------------------------------------

    def _lock(self) -> int:
        path = os.path.join(self.store, "lock")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (O_CREAT costs more on overlayfs)
        except FileNotFoundError:
            os.makedirs(self.store, 0o755, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o750)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _files(self):
        """(path, content) of every file under the store, in host-local's walk order (lexical,
        into subdirectories, never following a link to one).

        host-local reads every file on each ADD and DEL; so does this, but a file whose inode,
        size, mtime and ctime are what they were at the last walk is not read again (the
        store's files are created and removed whole; an in-place rewrite changes mtime)."""
        seen: dict[str, tuple] = {}
        cache = _CONTENTS.get(self.store, {})

        def walk(d):
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                return
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    yield from walk(e.path)
                    continue
                sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, stat.S_ISLNK(st.st_mode))
                hit = cache.get(e.path)
                if hit is not None and hit[0] == sig and not sig[4]:
                    content = hit[1]
                else:
                    try:
                        fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        continue
                    try:
                        chunks = []
                        while chunk := os.read(fd, 65536):
                            chunks.append(chunk)
                    except OSError:
                        continue
                    finally:
                        os.close(fd)
                    content = b"".join(chunks).decode("utf-8", "surrogateescape").strip(_GO_SPACE)
                seen[e.path] = (sig, content)
                yield e.path, content

        yield from walk(self.store)
        _CONTENTS[self.store] = seen

    def _keys(self) -> tuple[str, str]:
        cid = self.container_id.strip(_GO_SPACE)
        return cid + LINE_BREAK + self.ifname, cid

    def _held(self) -> list[tuple[int, int]]:
        """(version, address) of every lease of this attachment (host-local's GetByID)."""
        match, old = self._keys()
        out = []
        for path, content in self._files():
            if content in (match, old):
                try:
                    a = ipaddress.ip_address(os.path.basename(path))
                except ValueError:
                    continue
                out.append((a.version, int(a)))
        return out

    def _reserve(self, ip: int, version: int, idx: int) -> bool:
        text = _str(ip, version)
        path = os.path.join(self.store, text)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, (self.container_id.strip(_GO_SPACE) + LINE_BREAK + self.ifname).encode("utf-8", "surrogateescape"))
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        last = os.open(os.path.join(self.store, f"{LAST_IP_PREFIX}{idx}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(last, text.encode())
        finally:
            os.close(last)
        return True

    def _last_reserved(self, idx: int) -> tuple[int, int] | None:
        try:
            with open(os.path.join(self.store, f"{LAST_IP_PREFIX}{idx}"), "rb") as f:
                a = ipaddress.ip_address(f.read().decode())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return a.version, int(a)

    def _release(self) -> None:
        """host-local's ReleaseByID: the files naming the attachment, else (files written
        before host-local knew interface names) the container id alone."""
        for key in self._keys():
            found = False
            for path, content in self._files():
                if content == key:
                    try:
                        os.unlink(path)
                    except OSError:
                        continue
                    found = True
            if found:
                return

    # -- the allocator ------------------------------------------------------------------------

    def _get(self, rs: list[Range], idx: int) -> tuple[int, Range]:
        for version, ip in self._held():
            if any(r.contains(ip, version) for r in rs):
                raise _Fail(f"{_str(ip, version)} has been allocated to {self.container_id}, duplicate allocation is not allowed")
        last = self._last_reserved(idx)
        ridx, cur, start = 0, None, rs[0].start
        if last is not None and any(r.contains(last[1], last[0]) for r in rs):
            ridx = next(i for i, r in enumerate(rs) if r.contains(last[1], last[0]))
            cur, start = last[1], None
        while True:
            # host-local's RangeIter.Next(): rangeStart first, then on, wrapping through the
            # set's ranges, until back where it began; the range's gateway is never handed out.
            r = rs[ridx]
            if cur is None:
                cur = start = r.start
            else:
                if cur == r.end:
                    ridx = (ridx + 1) % len(rs)
                    r = rs[ridx]
                    cur = r.start
                else:
                    cur += 1
                if start is None:
                    start = cur
                elif cur == start:
                    raise _Fail(f"no IP addresses available in range set: {','.join(str(x) for x in rs)}")
            if cur == r.gateway:
                continue
            if self._reserve(cur, r.version, idx):
                return cur, r

    def add(self) -> dict:
        """ADD: the result document host-local prints (CNI 1.0.0 shape)."""
        fd = self._lock()
        try:
            ips = []
            for idx, rs in enumerate(self.ranges):
                try:
                    ip, r = self._get(rs, idx)
                except _Fail as e:
                    if ips:
                        self._release()  # host-local gives back what the earlier sets gave
                    raise _Fail(f"failed to allocate for range {idx}: {e}") from None
                ips.append({"address": f"{_str(ip, r.version)}/{r.plen}", "gateway": _str(r.gateway, r.version)})
        finally:
            os.close(fd)
        doc = {"cniVersion": self.version, "ips": ips}
        if self.routes:
            doc["routes"] = self.routes
        doc["dns"] = {}
        return doc

    def delete(self) -> None:
        fd = self._lock()
        try:
            # host-local releases once per range set; the first pass finds everything.
            for _ in self.ranges:
                self._release()
        finally:
            os.close(fd)

    def run(self, command: str) -> dict | None:
        """ADD or DEL, failing the way a delegated host-local fails (CniError 999 with its
        message)."""
        try:
            return self.add() if command == "ADD" else self.delete()
        except _Fail as e:
            raise CniError(INTERNAL, f"IPAM plugin {PLUGIN}: {e}", f"{PLUGIN} {command} (run in process by nkframe): {e}") from None
        except OSError as e:
            what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            raise CniError(INTERNAL, f"IPAM plugin {PLUGIN}: {what}", f"{PLUGIN} {command} (run in process by nkframe) on {self.store}: {what}") from None


class _Fail(Exception):
    pass


def load(conf: Mapping, environ: Mapping[str, str]) -> HostLocal | None:
    """host-local for this invocation (``conf``: the decoded network configuration), or None
    when the configuration or the environment asks for anything this module does not do
    exactly as host-local does (the caller then execs the plugin)."""
    try:
        return _load(conf, environ)
    except _Unsure:
        return None


def _load(conf: Mapping, environ: Mapping[str, str]) -> HostLocal:
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict) or ipam.get("type") != PLUGIN or set(ipam) - _IPAM_KEYS:
        raise _Unsure
    if ipam.get("resolvConf") not in (None, ""):
        raise _Unsure
    rc = conf.get("runtimeConfig")
    if rc is not None and (not isinstance(rc, dict) or rc.get("ips") or rc.get("ipRanges")):
        raise _Unsure
    args = conf.get("args")
    if args is not None:
        cni = args.get("cni") if isinstance(args, dict) else None
        if not isinstance(args, dict) or (cni is not None and (not isinstance(cni, dict) or cni.get("ips"))):
            raise _Unsure
    _check_env_args(environ.get("CNI_ARGS", ""))
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/") or "\0" in data_dir:
        raise _Unsure
    ranges: list[list[Range]] = []
    if "subnet" in ipam:
        ranges.append([Range({k: ipam[k] for k in _RANGE_KEYS if k in ipam})])
    elif any(k in ipam for k in ("rangeStart", "rangeEnd", "gateway")):
        raise _Unsure  # host-local ignores them without a subnet: too odd to second-guess
    extra = ipam.get("ranges")
    if extra is not None:
        if not isinstance(extra, list):
            raise _Unsure
        for rs in extra:
            if not isinstance(rs, list) or not rs:
                raise _Unsure
            ranges.append([Range(r) for r in rs])
    if not ranges:
        raise _Unsure
    every = [r for rs in ranges for r in rs]
    for rs in ranges:
        if len({r.version for r in rs}) != 1:
            raise _Unsure  # mixed families in a set
    for i, a in enumerate(every):
        for b in every[i + 1:]:
            if a.version == b.version and (a.contains(b.start) or a.contains(b.end) or b.contains(a.start) or b.contains(a.end)):
                raise _Unsure  # overlapping ranges
    routes = []
    if not isinstance(ipam.get("routes") or [], list):
        raise _Unsure
    for r in ipam.get("routes") or ():
        if not isinstance(r, dict) or set(r) - {"dst", "gw"} or not isinstance(r.get("dst"), str):
            raise _Unsure
        try:
            dst = ipaddress.ip_interface(_plain(r["dst"]))  # Go keeps a route's host bits
            route = {"dst": str(dst)}
            if r.get("gw") not in (None, ""):
                gw = ipaddress.ip_address(_plain(r["gw"]))
                if gw.version != dst.version:
                    raise _Unsure
                route["gw"] = str(gw)
        except (TypeError, ValueError):
            raise _Unsure from None
        routes.append(route)
    cid, ifname = environ.get("CNI_CONTAINERID"), environ.get("CNI_IFNAME")
    if not cid or not ifname:
        raise _Unsure
    return HostLocal(conf["name"], os.path.normpath(data_dir), ranges, routes, conf.get("cniVersion") or "1.0.0", cid, ifname)


def _check_env_args(args: str) -> None:
    """host-local reads CNI_ARGS with types.LoadArgs into {IgnoreUnknown, IP}: an address asked
    for, or arguments it would refuse, go to the plugin itself."""
    if not args:
        return
    unknown, ignore = False, False
    for pair in args.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            raise _Unsure
        k, v = kv
        if k == "IgnoreUnknown":
            if v.lower() not in ("1", "true", "0", "false"):
                raise _Unsure
            ignore = v.lower() in ("1", "true")
        elif k in ("IP", "CommonArgs"):
            raise _Unsure
        else:
            unknown = True
    if unknown and not ignore:
        raise _Unsure


def _plain(text: str) -> str:
    # Python accepts an IPv6 scope ("%eth0"), Go's net.ParseIP does not.
    if "%" in text:
        raise _Unsure
    return text


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(_plain(text), strict=True)
    except ValueError:
        raise _Unsure from None  # not a CIDR, or host bits set
    if net.version == 6 and ("." in text or net.overlaps(_MAPPED)):
        raise _Unsure  # Go turns IPv4-mapped addresses into IPv4 ones
    return net


def _addr(text: object, version: int) -> int:
    if not isinstance(text, str):
        raise _Unsure
    try:
        a = ipaddress.ip_address(_plain(text))
    except ValueError:
        raise _Unsure from None
    if a.version != version or (version == 6 and "." in text):
        raise _Unsure
    return int(a)


def _str(ip: int, version: int) -> str:
    return str(ipaddress.IPv4Address(ip) if version == 4 else ipaddress.IPv6Address(ip))

