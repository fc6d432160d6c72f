//! ferroloop-rust-echo: a single-threaded, edge-triggered epoll (mio) TCP echo
//! server. It is the "physical limit" the Python echo servers are compared
//! with: the same client, the same core, no interpreter.
//!
//! Usage: ferroloop-rust-echo [--host 127.0.0.1] [--port N] [--max-seconds S]
//! Prints `READY <port>` on stdout once it listens. Port 0 picks a free port.
//! It only listens on loopback addresses and exits by itself after
//! --max-seconds (default 900) so a lost driver never leaves it running.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const READ_CHUNK: usize = 256 * 1024;
const PAGE: usize = 4096;

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back.
    pending: Vec<u8>,
    /// How much of `pending` has been written already.
    written: usize,
    /// Whether we are currently also registered for WRITABLE.
    want_write: bool,
}

fn parse_args() -> (IpAddr, u16, u64) {
    let mut host: IpAddr = "127.0.0.1".parse().unwrap();
    let mut port: u16 = 0;
    let mut max_seconds: u64 = 900;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--host" => host = val("--host").parse().unwrap_or_else(|_| die("bad --host")),
            "--port" => port = val("--port").parse().unwrap_or_else(|_| die("bad --port")),
            "--max-seconds" => {
                max_seconds = val("--max-seconds")
                    .parse()
                    .unwrap_or_else(|_| die("bad --max-seconds"))
            }
            "-h" | "--help" => {
                println!(
                    "usage: ferroloop-rust-echo [--host 127.0.0.1] [--port N] [--max-seconds S]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    if !host.is_loopback() {
        die("refusing to listen on a non-loopback address");
    }
    (host, port, max_seconds)
}

fn die(msg: &str) -> ! {
    eprintln!("ferroloop-rust-echo: {msg}");
    std::process::exit(2);
}

/// Move data until the socket would block or a short read has emptied it.
/// Returns Ok(false) when the connection is finished (EOF or error) and
/// should be dropped.
/// The `READ_CHUNK` bytes of `storage` that start on a page boundary. A
/// buffer starting 16 bytes into a page (where glibc puts a large
/// allocation) makes the kernel's copy of page-aligned received data several
/// times slower (4K aliasing; ferroloop's `src/page_aligned.rs`), and the
/// limit must not pay for that.
fn page_aligned(storage: &mut [u8]) -> &mut [u8] {
    let start = (PAGE - storage.as_ptr() as usize % PAGE) % PAGE;
    &mut storage[start..start + READ_CHUNK]
}

fn drive(conn: &mut Conn, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        // Flush what is pending first.
        while conn.written < conn.pending.len() {
            match conn.stream.write(&conn.pending[conn.written..]) {
                Ok(0) => return Ok(false),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        conn.pending.clear();
        conn.written = 0;
        // Nothing pending: read and try to echo straight from the scratch
        // buffer, keeping only the unwritten tail.
        let n = match conn.stream.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match conn.stream.write(&scratch[off..n]) {
                Ok(0) => return Ok(false),
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if off < n {
            conn.pending.extend_from_slice(&scratch[off..n]);
            // Stop reading until the peer drains: the loop above returns
            // on WouldBlock at the next pass.
        } else if n < scratch.len() {
            // A short read emptied the receive queue. Edge-triggered epoll
            // reports the next arrival (or the FIN) as a new event, so a
            // second read would only fetch EAGAIN: one system call saved
            // per request, as a level-triggered loop saves it too.
            return Ok(true);
        }
    }
}

fn main() {
    let (host, port, max_seconds) = parse_args();
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let mut listener = TcpListener::bind(SocketAddr::new(host, port))
        .unwrap_or_else(|e| die(&format!("bind: {e}")));
    let local = listener.local_addr().unwrap();
    let mut poll = Poll::new().unwrap_or_else(|e| die(&format!("epoll: {e}")));
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    println!("READY {}", local.port());
    let _ = io::stdout().flush();

    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut storage = vec![0u8; READ_CHUNK + PAGE];
    let scratch = page_aligned(&mut storage);

    loop {
        if Instant::now() >= deadline {
            eprintln!("ferroloop-rust-echo: --max-seconds reached, exiting");
            return;
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            die(&format!("poll: {e}"));
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let tok = next_token;
                            next_token += 1;
                            if poll
                                .registry()
                                .register(&mut stream, Token(tok), Interest::READABLE)
                                .is_err()
                            {
                                continue;
                            }
                            let mut conn = Conn {
                                stream,
                                pending: Vec::new(),
                                written: 0,
                                want_write: false,
                            };
                            // Data may already be waiting.
                            match drive(&mut conn, scratch) {
                                Ok(true) => {
                                    conns.insert(tok, conn);
                                }
                                _ => continue,
                            }
                            let c = conns.get_mut(&tok).unwrap();
                            update_interest(&poll, tok, c);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // EMFILE and friends: report and keep serving.
                            eprintln!("ferroloop-rust-echo: accept: {e}");
                            break;
                        }
                    }
                },
                Token(tok) => {
                    let keep = match conns.get_mut(&tok) {
                        Some(conn) => matches!(drive(conn, scratch), Ok(true)),
                        None => continue,
                    };
                    if keep {
                        let c = conns.get_mut(&tok).unwrap();
                        update_interest(&poll, tok, c);
                    } else if let Some(mut c) = conns.remove(&tok) {
                        let _ = poll.registry().deregister(&mut c.stream);
                    }
                }
            }
        }
    }
}

/// Register WRITABLE only while there is unsent data, so idle connections
/// cost nothing.
fn update_interest(poll: &Poll, tok: usize, c: &mut Conn) {
    let need = c.written < c.pending.len();
    if need != c.want_write {
        let interest = if need {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if poll
            .registry()
            .reregister(&mut c.stream, Token(tok), interest)
            .is_ok()
        {
            c.want_write = need;
        }
    }
}
