//! ferroloop-loadgen: the load client of ferroloop's benchmarks.
//!
//! One thread, one epoll (mio) instance, N keep-alive connections, each doing
//! closed-loop request/response: send a request, wait for the full response,
//! send the next. It is meant to be pinned to its own core with taskset so
//! that it is never the bottleneck.
//!
//! Modes:
//!   echo  send --size bytes, expect the same bytes back (they are verified)
//!   http  send a small GET, expect an HTTP/1.1 response with Content-Length
//!   idle  open --connections sockets (one 1-byte echo round trip each so the
//!         server has surely accepted them), print an event line, hold them
//!         for --duration seconds, close
//!
//! Every run is bounded by time (--warmup + --duration, plus --timeout for a
//! stalled server) and by count (--max-requests). Only loopback addresses are
//! accepted as targets. The result is one JSON object on stdout.
//!
//! With --server-pid, the server's CPU time (utime+stime from
//! /proc/<pid>/stat), the client's own CPU time and the machine-wide busy time
//! from /proc/stat are sampled at the exact start and end of the measurement
//! window and reported as deltas, so the driver can compute CPU per request
//! and detect foreign load.

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    Http,
    Idle,
}

struct Args {
    addr: SocketAddr,
    mode: Mode,
    connections: usize,
    size: usize,
    warmup: f64,
    duration: f64,
    max_requests: u64,
    timeout: f64,
    server_pid: Option<u32>,
    path: String,
}

fn die(msg: &str) -> ! {
    // Errors are still reported as JSON so the driver can always parse stdout.
    println!("{{\"error\": {}}}", json_str(msg));
    eprintln!("ferroloop-loadgen: {msg}");
    std::process::exit(2);
}

const USAGE: &str = "usage: ferroloop-loadgen --port N [--host 127.0.0.1] [--mode echo|http|idle]
       [--connections 10] [--size 1024] [--warmup 1] [--duration 5]
       [--max-requests 50000000] [--timeout 10] [--server-pid PID] [--path /]";

fn parse_args() -> Args {
    let mut host: IpAddr = "127.0.0.1".parse().unwrap();
    let mut port: Option<u16> = None;
    let mut a = Args {
        addr: "127.0.0.1:1".parse().unwrap(),
        mode: Mode::Echo,
        connections: 10,
        size: 1024,
        warmup: 1.0,
        duration: 5.0,
        max_requests: 50_000_000,
        timeout: 10.0,
        server_pid: None,
        path: "/".to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--host" => host = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--port" => port = Some(v.parse().unwrap_or_else(|_| bad(&flag, &v))),
            "--mode" => {
                a.mode = match v.as_str() {
                    "echo" => Mode::Echo,
                    "http" => Mode::Http,
                    "idle" => Mode::Idle,
                    _ => die("--mode must be echo, http or idle"),
                }
            }
            "--connections" | "-c" => a.connections = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--size" => a.size = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--warmup" => a.warmup = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--duration" | "-d" => a.duration = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--max-requests" => a.max_requests = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--timeout" => a.timeout = v.parse().unwrap_or_else(|_| bad(&flag, &v)),
            "--server-pid" => a.server_pid = Some(v.parse().unwrap_or_else(|_| bad(&flag, &v))),
            "--path" => a.path = v,
            _ => die(&format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    let port = port.unwrap_or_else(|| die("--port is required"));
    if !host.is_loopback() {
        die("only loopback targets (127.0.0.0/8, ::1) are allowed");
    }
    if a.connections == 0 || a.connections > 60_000 {
        die("--connections must be in 1..=60000");
    }
    if a.mode == Mode::Echo && a.size == 0 {
        die("--size must be > 0");
    }
    for (name, v) in [
        ("--warmup", a.warmup),
        ("--duration", a.duration),
        ("--timeout", a.timeout),
    ] {
        if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
            die(&format!("{name} must be within 0..3600 seconds"));
        }
    }
    if a.timeout <= 0.0 {
        a.timeout = 10.0;
    }
    a.addr = SocketAddr::new(host, port);
    a
}

fn bad(flag: &str, v: &str) -> ! {
    die(&format!("bad value for {flag}: {v}"))
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

// ---------------------------------------------------------------- CPU stats

#[derive(Clone, Default)]
struct CpuSnap {
    server_ticks: Option<u64>,
    self_ticks: u64,
    /// user+nice+system over all CPUs.
    busy: u64,
    /// irq+softirq over all CPUs (network processing lands here too).
    irq: u64,
    steal: u64,
    per_cpu_busy: Vec<u64>,
}

fn proc_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the ")" closing the command name: state is field 3, utime
    // field 14 and stime field 15 (1-based), i.e. index 11 and 12 here.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some(ut + st)
}

fn snap(server_pid: Option<u32>) -> CpuSnap {
    let mut c = CpuSnap {
        server_ticks: server_pid.and_then(|p| proc_ticks(&format!("/proc/{p}/stat"))),
        self_ticks: proc_ticks("/proc/self/stat").unwrap_or(0),
        ..Default::default()
    };
    if let Ok(s) = std::fs::read_to_string("/proc/stat") {
        for line in s.lines() {
            if !line.starts_with("cpu") {
                continue;
            }
            let mut parts = line.split_whitespace();
            let name = parts.next().unwrap_or("");
            let v: Vec<u64> = parts.map(|x| x.parse().unwrap_or(0)).collect();
            let g = |i: usize| v.get(i).copied().unwrap_or(0);
            let busy = g(0) + g(1) + g(2);
            if name == "cpu" {
                c.busy = busy;
                c.irq = g(5) + g(6);
                c.steal = g(7);
            } else {
                c.per_cpu_busy.push(busy);
            }
        }
    }
    c
}

fn cpu_json(a: &CpuSnap, b: &CpuSnap, window: f64) -> String {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let server = match (a.server_ticks, b.server_ticks) {
        (Some(x), Some(y)) => (y.saturating_sub(x)).to_string(),
        _ => "null".to_string(),
    };
    let per: Vec<String> = a
        .per_cpu_busy
        .iter()
        .zip(b.per_cpu_busy.iter())
        .map(|(x, y)| y.saturating_sub(*x).to_string())
        .collect();
    format!(
        "{{\"clk_tck\": {tck}, \"window_s\": {window:.6}, \"server_ticks\": {server}, \
         \"self_ticks\": {}, \"busy_ticks\": {}, \"irq_ticks\": {}, \"steal_ticks\": {}, \
         \"per_cpu_busy_ticks\": [{}]}}",
        b.self_ticks.saturating_sub(a.self_ticks),
        b.busy.saturating_sub(a.busy),
        b.irq.saturating_sub(a.irq),
        b.steal.saturating_sub(a.steal),
        per.join(", ")
    )
}

// ---------------------------------------------------------------- histogram

/// 1 µs buckets up to 1 s, exact values above.
struct Hist {
    buckets: Vec<u32>,
    over: Vec<u64>,
    count: u64,
    sum_us: u128,
    max_us: u64,
}

const HIST_US: usize = 1_000_000;

impl Hist {
    fn new() -> Self {
        Hist {
            buckets: vec![0; HIST_US],
            over: Vec::new(),
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
    fn reset(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.over.clear();
        self.count = 0;
        self.sum_us = 0;
        self.max_us = 0;
    }
    fn record(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        if (us as usize) < HIST_US {
            self.buckets[us as usize] += 1;
        } else {
            self.over.push(us);
        }
        self.count += 1;
        self.sum_us += us as u128;
        self.max_us = self.max_us.max(us);
    }
    fn quantile(&mut self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (us, &n) in self.buckets.iter().enumerate() {
            seen += n as u64;
            if seen >= rank {
                return us as u64;
            }
        }
        self.over.sort_unstable();
        let idx = (rank - seen - 1) as usize;
        self.over[idx.min(self.over.len() - 1)]
    }
    fn json(&mut self) -> String {
        let mean = if self.count > 0 {
            self.sum_us as f64 / self.count as f64
        } else {
            0.0
        };
        format!(
            "{{\"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}, \"mean\": {:.1}}}",
            self.quantile(0.50),
            self.quantile(0.90),
            self.quantile(0.99),
            self.quantile(0.999),
            self.max_us,
            mean
        )
    }
}

// ---------------------------------------------------------------- connections

struct Conn {
    stream: MioStream,
    sent: usize,
    recvd: usize,
    started: Instant,
    /// HTTP: response bytes gathered so far.
    resp: Vec<u8>,
    /// HTTP: header length and total length once known.
    head_len: Option<usize>,
    total_len: Option<usize>,
    /// Set by reset(): the request has not been written yet, so no response
    /// bytes can be waiting and the read that would only return EAGAIN is
    /// skipped (an edge-triggered READABLE event follows the response).
    fresh: bool,
    /// Echo: whether this response is read into user space and compared
    /// with the request (every VERIFY_EVERY-th request of a connection).
    verify: bool,
    done_on_conn: u64,
}

const VERIFY_EVERY: u64 = 8;

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Parse the status line and headers of an HTTP/1.1 response head.
/// Returns the body length.
fn parse_head(head: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut sp = status.split(' ');
    let ver = sp.next().unwrap_or("");
    let code = sp.next().unwrap_or("");
    if !ver.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("unexpected status line {status:?}"));
    }
    let mut cl = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                cl = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported".into());
            } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            {
                return Err("server sent Connection: close".into());
            }
        }
    }
    cl.ok_or_else(|| "response without Content-Length".to_string())
}

enum Step {
    /// Nothing more to do until the next readiness event.
    Blocked,
    /// A response completed at this instant; its latency is included.
    Done(Duration),
}

struct Ctx<'a> {
    mode: Mode,
    request: &'a [u8],
    scratch: Vec<u8>,
    bytes_in: u64,
}

impl<'a> Ctx<'a> {
    /// Drive one connection until it would block or one response completes.
    fn step(&mut self, c: &mut Conn) -> Result<Step, String> {
        let req = self.request;
        while c.sent < req.len() {
            match c.stream.write(&req[c.sent..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if c.fresh {
            c.fresh = false;
            if c.sent == req.len() {
                return Ok(Step::Blocked);
            }
        }
        loop {
            // Echo responses that are not sampled for verification are
            // discarded in the kernel (recv with MSG_TRUNC skips the copy to
            // user space for TCP), so the client stays far cheaper than the
            // server even at 100 KiB messages.
            let res = if self.mode == Mode::Echo && !c.verify {
                let want = (c.sent - c.recvd).max(1).min(self.scratch.len());
                let r = unsafe {
                    libc::recv(
                        c.stream.as_raw_fd(),
                        self.scratch.as_mut_ptr() as *mut libc::c_void,
                        want,
                        libc::MSG_TRUNC,
                    )
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r as usize)
                }
            } else {
                c.stream.read(&mut self.scratch)
            };
            let n = match res {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            self.bytes_in += n as u64;
            match self.mode {
                Mode::Echo => {
                    let end = c.recvd + n;
                    if end > c.sent {
                        return Err(format!(
                            "echo returned more bytes ({end}) than were sent ({})",
                            c.sent
                        ));
                    }
                    if c.verify && self.scratch[..n] != req[c.recvd..end] {
                        return Err(format!(
                            "echoed bytes differ from sent bytes at offset {}",
                            c.recvd
                        ));
                    }
                    c.recvd = end;
                    if c.recvd == req.len() {
                        return Ok(Step::Done(c.started.elapsed()));
                    }
                }
                Mode::Http => {
                    let before = c.resp.len();
                    c.resp.extend_from_slice(&self.scratch[..n]);
                    if c.head_len.is_none() {
                        let from = before.saturating_sub(3);
                        if let Some(p) = find_subslice(&c.resp[from..], b"\r\n\r\n") {
                            let hl = from + p + 4;
                            let body = parse_head(&c.resp[..hl])?;
                            c.head_len = Some(hl);
                            c.total_len = Some(hl + body);
                        } else if c.resp.len() > 64 * 1024 {
                            return Err("response head larger than 64 KiB".into());
                        }
                    }
                    if let Some(t) = c.total_len {
                        if c.resp.len() > t {
                            return Err("more response bytes than Content-Length announced".into());
                        }
                        if c.resp.len() == t {
                            return Ok(Step::Done(c.started.elapsed()));
                        }
                    }
                }
                Mode::Idle => unreachable!(),
            }
        }
    }
}

fn reset(c: &mut Conn) {
    c.sent = 0;
    c.recvd = 0;
    c.resp.clear();
    c.head_len = None;
    c.total_len = None;
    c.fresh = true;
    c.verify = c.done_on_conn.is_multiple_of(VERIFY_EVERY);
    c.started = Instant::now();
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn raise_nofile(need: u64) {
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < need {
            rl.rlim_cur = rl.rlim_max.min(need.max(rl.rlim_cur));
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

// ---------------------------------------------------------------- modes

fn run_idle(a: &Args) {
    raise_nofile(a.connections as u64 + 64);
    let t0 = Instant::now();
    let hard_deadline = t0 + Duration::from_secs_f64(a.timeout * 2.0 + a.duration + 60.0);
    let io_timeout = Duration::from_secs_f64(a.timeout);
    let mut socks = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        if Instant::now() > hard_deadline {
            die("idle: connecting took too long");
        }
        let mut s =
            connect(a.addr, io_timeout).unwrap_or_else(|e| die(&format!("idle conn {i}: {e}")));
        let _ = s.set_read_timeout(Some(io_timeout));
        let mut b = [b'x'];
        if let Err(e) = s.write_all(&b).and_then(|_| s.read_exact(&mut b)) {
            die(&format!("idle conn {i}: 1-byte round trip failed: {e}"));
        }
        socks.push(s);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    println!(
        "{{\"event\": \"connected\", \"connections\": {}, \"connect_s\": {connect_s:.3}}}",
        socks.len()
    );
    let _ = io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(a.duration));
    drop(socks);
    println!(
        "{{\"mode\": \"idle\", \"connections\": {}, \"connect_s\": {connect_s:.3}, \"held_s\": {:.3}, \"error\": null}}",
        a.connections, a.duration
    );
}

fn run_load(a: &Args) {
    raise_nofile(a.connections as u64 + 64);
    let request: Vec<u8> = match a.mode {
        Mode::Echo => (0..a.size)
            .map(|i| (i.wrapping_mul(131).wrapping_add(i >> 8) & 0xff) as u8)
            .collect(),
        Mode::Http => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferroloop-loadgen\r\nAccept: */*\r\n\r\n",
            a.path, a.addr
        )
        .into_bytes(),
        Mode::Idle => unreachable!(),
    };
    let mut poll = Poll::new().unwrap_or_else(|e| die(&format!("epoll: {e}")));
    let mut conns: Vec<Conn> = Vec::with_capacity(a.connections);
    let io_timeout = Duration::from_secs_f64(a.timeout);
    for i in 0..a.connections {
        let s = connect(a.addr, io_timeout).unwrap_or_else(|e| die(&e));
        s.set_nonblocking(true).unwrap();
        let mut stream = MioStream::from_std(s);
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        conns.push(Conn {
            stream,
            sent: 0,
            recvd: 0,
            started: Instant::now(),
            resp: Vec::new(),
            head_len: None,
            total_len: None,
            fresh: false,
            verify: true,
            done_on_conn: 0,
        });
    }
    let mut ctx = Ctx {
        mode: a.mode,
        request: &request,
        scratch: vec![0u8; 256 * 1024],
        bytes_in: 0,
    };
    let mut hist = Hist::new();
    let mut events = Events::with_capacity(1024);

    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(a.warmup);
    let mut measuring = a.warmup <= 0.0;
    let mut m_start = t0;
    let mut m_end = t0 + Duration::from_secs_f64(a.duration);
    let mut snap_a = if measuring {
        snap(a.server_pid)
    } else {
        CpuSnap::default()
    };
    let mut bytes_at_start = 0u64;
    let mut last_progress = Instant::now();
    let mut stopped_by = "duration";
    let mut total_requests = 0u64;
    let mut verified = 0u64;

    // Kick every connection off: the first write happens here.
    let fail = |msg: String, done: u64| -> ! {
        die(&format!("{msg} (after {done} responses)"));
    };
    for c in conns.iter_mut() {
        reset(c);
        if let Err(e) = ctx.step(c) {
            fail(e, 0);
        }
    }

    loop {
        let now = Instant::now();
        if !measuring && now >= warm_end {
            measuring = true;
            hist.reset();
            snap_a = snap(a.server_pid);
            m_start = Instant::now();
            m_end = m_start + Duration::from_secs_f64(a.duration);
            bytes_at_start = ctx.bytes_in;
        }
        if measuring && (now >= m_end || hist.count >= a.max_requests) {
            if hist.count >= a.max_requests {
                stopped_by = "max_requests";
            }
            break;
        }
        if now.duration_since(last_progress) > io_timeout {
            fail(
                format!("no response for {:.1} s: server stalled", a.timeout),
                total_requests,
            );
        }
        let next = if measuring { m_end } else { warm_end };
        let wait = next
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                die(&format!("poll: {e}"));
            }
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            loop {
                match ctx.step(c) {
                    Ok(Step::Blocked) => break,
                    Ok(Step::Done(lat)) => {
                        total_requests += 1;
                        if c.verify {
                            verified += 1;
                        }
                        c.done_on_conn += 1;
                        last_progress = Instant::now();
                        if measuring {
                            hist.record(lat);
                        }
                        reset(c);
                    }
                    Err(e) => fail(e, total_requests),
                }
            }
        }
    }
    let snap_b = snap(a.server_pid);
    let window = m_start.elapsed().as_secs_f64();
    let reqs = hist.count;
    let bytes = ctx.bytes_in - bytes_at_start;
    let payload_bytes = match a.mode {
        Mode::Echo => reqs * a.size as u64,
        _ => bytes,
    };
    let mode = if a.mode == Mode::Echo { "echo" } else { "http" };
    println!(
        "{{\"mode\": \"{mode}\", \"addr\": \"{}\", \"connections\": {}, \"size\": {}, \
         \"warmup_s\": {}, \"duration_s\": {window:.6}, \"stopped_by\": \"{stopped_by}\", \
         \"requests\": {reqs}, \"rps\": {:.1}, \"mib_s\": {:.3}, \"bytes_in\": {bytes}, \
         \"verified_responses\": {verified}, \"latency_us\": {}, \"cpu\": {}, \"error\": null}}",
        a.addr,
        a.connections,
        if a.mode == Mode::Echo { a.size } else { 0 },
        a.warmup,
        reqs as f64 / window,
        payload_bytes as f64 / window / (1024.0 * 1024.0),
        hist.json(),
        cpu_json(&snap_a, &snap_b, window),
    );
}

fn main() {
    let a = parse_args();
    match a.mode {
        Mode::Idle => run_idle(&a),
        _ => run_load(&a),
    }
}
