//! Socket addresses between their kernel form ([`socket2::SockAddr`]) and
//! the Python values of the `socket` module.
//!
//! What it guarantees:
//!
//! * [`to_python`] returns what Python's `socket` module returns for the same
//!   `sockaddr` and length (CPython's `makesockaddr`):
//!   - `AF_INET`: `(host, port)`, the host in dotted-quad form;
//!   - `AF_INET6`: `(host, port, flowinfo, scope_id)`, the host as
//!     `inet_ntop` writes it, without a `%scope` suffix (the scope is the
//!     fourth item);
//!   - `AF_UNIX`: a path as `str`, decoded with the filesystem encoding
//!     (`surrogateescape`); a Linux abstract name as `bytes`, leading NUL
//!     included; an unnamed socket as `socket` reports it for the call that
//!     produced the address: a zero-length address (what `recvfrom` gets
//!     from an unbound sender) is `None`, a bare family (what `getsockname`,
//!     `getpeername` and `accept` get for an unbound socket) is `''`;
//!   - no address at all (length 0, any family): `None`;
//!   - other families: `(family, the bytes after the family)`, as `sock_*`
//!     always returned them (`socket` has its own formats for some).
//! * [`to_python_zoned`] is the same except that a link-local IPv6 host with
//!   a scope carries a `%scope` suffix (`getnameinfo(NI_NUMERICHOST)`, e.g.
//!   `'fe80::1%eth0'`). `socket` itself does not add it (CPython >= 3.7
//!   uses `inet_ntop`); `loop.sock_*` have always returned it and still do.
//! * [`from_python`] is the reverse for plain numeric addresses: an
//!   `AF_INET` `(host, port)`, an `AF_INET6` `(host, port[, flowinfo[,
//!   scope_id]])` with numeric hosts and `int` numbers in range, or an
//!   `AF_UNIX` path (`str` or `bytes`) that fits. It gives the `sockaddr`
//!   the `socket` module would build from it, and `None` for everything
//!   else (host names, `''`, `'<broadcast>'`, `%scope` hosts, wrong types or
//!   ranges, other families): those are for the Python socket, which
//!   resolves them or raises its own error. One exception is kept from the
//!   datagram transport: an `AF_UNIX` `''` becomes the empty abstract name
//!   (`socket` refuses it with `EINVAL`).
//!
//! [`getsockname`], [`getpeername`] and [`filled_by`] read addresses from
//! the kernel.

use std::ffi::{CStr, OsStr, OsString};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;

use nix::errno::Errno;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};
use pyo3::{ffi, IntoPyObjectExt};
use socket2::{SockAddr, SockAddrStorage};

use crate::gil_locked::GilLocked;

/// Calls `fill` with a zeroed address buffer and its size in/out length (the
/// arguments of `getsockname`, `recvfrom`, `accept`, ...), and returns what
/// `fill` returned with the address it left there.
pub fn filled_by<R>(
    fill: impl FnOnce(*mut libc::sockaddr, *mut libc::socklen_t) -> R,
) -> (R, SockAddr) {
    let mut storage = SockAddrStorage::zeroed();
    let capacity = storage.size_of();
    let mut len = capacity;
    let result = fill((&mut storage as *mut SockAddrStorage).cast(), &mut len);
    // SAFETY: the storage was zeroed, so all of it is initialised whatever
    // `fill` wrote; the length is capped at its size (the kernel reports
    // the full length of an address it had to truncate).
    let addr = unsafe { SockAddr::new(storage, len.min(capacity)) };
    (result, addr)
}

/// The local address of socket `fd`.
pub fn getsockname(fd: RawFd) -> Result<SockAddr, Errno> {
    name_of(fd, libc::getsockname)
}

/// The address of the peer of socket `fd`.
pub fn getpeername(fd: RawFd) -> Result<SockAddr, Errno> {
    name_of(fd, libc::getpeername)
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name_of(fd: RawFd, call: NameCall) -> Result<SockAddr, Errno> {
    // SAFETY: the pointers are a valid address buffer and its length.
    let (rc, addr) = filled_by(|addr, len| unsafe { call(fd, addr, len) });
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(addr)
    }
}

/// An address a connection keeps for its life (a transport's local and peer
/// address). socket2's `SockAddr` carries a whole `sockaddr_storage`, 132
/// bytes with its length; an IP address fits in 32, which is most of a
/// transport's size at 10,000 idle connections. Other families, and IP
/// addresses of an unusual length, are kept as they came, boxed.
pub enum KeptAddr {
    Ip(SocketAddr),
    Other(Box<SockAddr>),
}

impl From<SockAddr> for KeptAddr {
    fn from(addr: SockAddr) -> Self {
        match addr.as_socket() {
            // Only where rebuilding gives the same length: the same bytes.
            Some(ip) if SockAddr::from(ip).len() == addr.len() => Self::Ip(ip),
            _ => Self::Other(Box::new(addr)),
        }
    }
}

impl KeptAddr {
    /// The address as the `socket` module returns it (see [`to_python`]).
    pub fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Self::Ip(ip) => to_python(py, &SockAddr::from(*ip)),
            Self::Other(addr) => to_python(py, addr),
        }
    }
}

/// `addr` as the `socket` module returns it (see the module documentation).
pub fn to_python<'py>(py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    convert(py, addr, false)
}

/// As [`to_python`], with a `%scope` suffix on link-local IPv6 hosts.
pub fn to_python_zoned<'py>(py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    convert(py, addr, true)
}

fn convert<'py>(py: Python<'py>, addr: &SockAddr, zoned: bool) -> PyResult<Bound<'py, PyAny>> {
    if addr.len() == 0 {
        return Ok(py.None().into_bound(py));
    }
    match addr.as_socket() {
        Some(SocketAddr::V4(v4)) => (ipv4_host(py, v4.ip()), v4.port()).into_bound_py_any(py),
        Some(SocketAddr::V6(v6)) => {
            let zone = zoned && v6.scope_id() != 0;
            let host = zone.then(|| numeric_host(addr)).flatten();
            (
                host.unwrap_or_else(|| ipv6_text(v6.ip())),
                v6.port(),
                // socket2 keeps sin6_flowinfo as it is stored: in network order.
                u32::from_be(v6.flowinfo()),
                v6.scope_id(),
            )
                .into_bound_py_any(py)
        }
        None => {
            let offset = std::mem::size_of::<libc::sa_family_t>();
            let data = bytes(addr).get(offset..).unwrap_or(&[]);
            if addr.is_unix() {
                unix_path(py, data)
            } else {
                (i32::from(addr.family()), PyBytes::new(py, data)).into_bound_py_any(py)
            }
        }
    }
}

/// The last IPv4 host turned into text, and that text: connections mostly
/// come from and go to a handful of hosts (loopback above all), so repeated
/// conversions share one string.
static LAST_IPV4_HOST: GilLocked<Option<(Ipv4Addr, Py<PyString>)>> = GilLocked::new(None);

/// An IPv4 address in dotted-quad form, as the `socket` module shows it.
fn ipv4_host<'py>(py: Python<'py>, ip: &Ipv4Addr) -> Bound<'py, PyString> {
    if let Some((last, text)) = LAST_IPV4_HOST.lock(py).as_ref() {
        if last == ip {
            return text.bind(py).clone();
        }
    }
    let text = PyString::new(py, &dotted_quad(ip));
    // The string replaced is freed under the guard: a str runs no Python.
    *LAST_IPV4_HOST.lock(py) = Some((*ip, text.clone().unbind()));
    text
}

/// `Ipv4Addr`'s `Display` goes through the formatting machinery (several
/// times slower); this writes the four decimal numbers directly.
fn dotted_quad(ip: &Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The `len()` initialised bytes of `addr`.
fn bytes(addr: &SockAddr) -> &[u8] {
    // SAFETY: a SockAddr's storage holds at least `len()` initialised bytes.
    unsafe { std::slice::from_raw_parts(addr.as_ptr().cast::<u8>(), addr.len() as usize) }
}

/// A Unix socket's `sun_path` (as long as the kernel said) as Python value.
fn unix_path<'py>(py: Python<'py>, path: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if path.first() == Some(&0) {
        // Linux's abstract namespace: the exact bytes, leading NUL included.
        return Ok(PyBytes::new(py, path).into_any());
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    // SAFETY: a valid pointer/length pair; returns a new reference or NULL.
    unsafe {
        let text =
            ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t);
        Bound::from_owned_ptr_or_err(py, text)
    }
}

/// `INET6_ADDRSTRLEN` from <netinet/in.h>.
const INET6_ADDRSTRLEN: usize = 46;

extern "C" {
    // POSIX, in the C library (the `libc` crate does not declare it).
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// An IPv6 address as `inet_ntop` writes it, which is what Python shows
/// (Rust's `Display` differs, e.g. `::102:304` for `::1.2.3.4`).
fn ipv6_text(ip: &Ipv6Addr) -> String {
    let octets = ip.octets();
    let mut text = [0 as libc::c_char; INET6_ADDRSTRLEN];
    // SAFETY: `octets` is an in6_addr's 16 bytes and `text` has
    // INET6_ADDRSTRLEN bytes.
    let written = unsafe {
        inet_ntop(
            libc::AF_INET6,
            octets.as_ptr().cast(),
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
        )
    };
    if written.is_null() {
        return ip.to_string();
    }
    // SAFETY: inet_ntop succeeded, so `text` holds a NUL-terminated string.
    unsafe { CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `getnameinfo(NI_NUMERICHOST)`: IPv6 text with its `%scope` suffix.
fn numeric_host(addr: &SockAddr) -> Option<String> {
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `addr` is a valid sockaddr of `addr.len()` bytes; `host` is a
    // writable buffer of the size given; no service buffer is requested.
    let rc = unsafe {
        libc::getnameinfo(
            addr.as_ptr().cast(),
            addr.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NUMERICHOST,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into `host`.
    let text = unsafe { CStr::from_ptr(host.as_ptr()) };
    text.to_str().ok().map(str::to_owned)
}

/// Parses a plain numeric address of `family` natively; `None` means "let
/// Python's socket do it" (see the module documentation).
pub fn from_python(addr: &Bound<'_, PyAny>, family: libc::c_int) -> Option<SockAddr> {
    match family {
        libc::AF_INET => {
            let tuple = addr.cast::<PyTuple>().ok()?;
            if tuple.len() != 2 {
                return None;
            }
            let ip: Ipv4Addr = host(tuple)?;
            let port = exact_int::<u16>(&tuple.get_item(1).ok()?)?;
            Some(SocketAddrV4::new(ip, port).into())
        }
        libc::AF_INET6 => {
            let tuple = addr.cast::<PyTuple>().ok()?;
            if !(2..=4).contains(&tuple.len()) {
                return None;
            }
            // Rust's parser refuses a `%scope` suffix, as it should here.
            let ip: Ipv6Addr = host(tuple)?;
            let port = exact_int::<u16>(&tuple.get_item(1).ok()?)?;
            let flowinfo = match tuple.get_item(2) {
                Ok(value) => exact_int::<u32>(&value).filter(|f| *f <= 0xF_FFFF)?,
                Err(_) => 0,
            };
            let scope_id = match tuple.get_item(3) {
                Ok(value) => exact_int::<u32>(&value)?,
                Err(_) => 0,
            };
            // socket2 stores flowinfo as given: it must be in network order.
            Some(SocketAddrV6::new(ip, port, flowinfo.to_be(), scope_id).into())
        }
        libc::AF_UNIX => {
            if let Ok(path) = addr.cast::<PyBytes>() {
                unix(path.as_bytes())
            } else if addr.is_instance_of::<PyString>() {
                let path: OsString = addr.extract().ok()?;
                unix(path.as_bytes())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A Unix address; `None` when the path does not fit (Python reports that).
fn unix(path: &[u8]) -> Option<SockAddr> {
    // Kept from the first datagram implementation: `''` goes to the empty
    // abstract name (`socket` refuses it with EINVAL).
    let path = if path.is_empty() { b"\0" } else { path };
    SockAddr::unix(OsStr::from_bytes(path)).ok()
}

/// The first item of an address tuple, a `str`, parsed as an IP address.
fn host<T: FromStr>(tuple: &Bound<'_, PyTuple>) -> Option<T> {
    let host = tuple.get_item(0).ok()?;
    host.cast::<PyString>().ok()?.to_str().ok()?.parse().ok()
}

/// An `int` (not a float or a string) in the range of `T`.
fn exact_int<'py, T>(value: &Bound<'py, PyAny>) -> Option<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    if !value.is_instance_of::<PyInt>() {
        return None;
    }
    value.extract::<T>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_quad_matches_display() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 99, 100, 255),
            Ipv4Addr::new(9, 10, 199, 200),
        ] {
            assert_eq!(dotted_quad(&ip), ip.to_string());
        }
    }

    /// What a kept address gives back, as bytes of its `sockaddr`.
    fn kept_bytes(addr: SockAddr) -> Vec<u8> {
        match KeptAddr::from(addr) {
            KeptAddr::Ip(ip) => bytes(&SockAddr::from(ip)).to_vec(),
            KeptAddr::Other(addr) => bytes(&addr).to_vec(),
        }
    }

    #[test]
    fn a_kept_address_is_the_address_it_was_given() {
        let v6 = SocketAddrV6::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 8080, 0x1234, 3);
        let unix = SockAddr::unix("/tmp/ferroloop-kept.sock").unwrap();
        let mut all = vec![
            SockAddr::from(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 443)),
            SockAddr::from(v6),
            unix,
        ];
        // An AF_INET address shorter than a sockaddr_in (as a kernel could
        // report for an odd socket) must not be rebuilt at full length.
        // SAFETY: the closure writes 8 bytes into storage of 128 and says so.
        let short = unsafe {
            SockAddr::try_init(|storage, len| {
                let inet = SockAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
                std::ptr::copy_nonoverlapping(inet.as_ptr().cast::<u8>(), storage.cast::<u8>(), 8);
                *len = 8;
                Ok(())
            })
        }
        .unwrap()
        .1;
        all.push(short);
        for addr in all {
            let expected = bytes(&addr).to_vec();
            assert_eq!(kept_bytes(addr), expected);
        }
        let kept = KeptAddr::from(SockAddr::from(v6));
        assert!(matches!(kept, KeptAddr::Ip(_)));
    }
}
