//! `pgwarden-floor`: a benchmark instrument, not part of pgwarden.
//!
//! The least a transaction-mode pooler can do, so that a benchmark can show
//! what any proxy costs on this machine before it does anything useful: one
//! thread, one level-triggered epoll set, no timers, no allocation per
//! transaction (a new connection allocates its startup buffer), no checks.
//! Clients get a canned login (no authentication, the startup parameters
//! not even read); server connections are opened at start (trust only); a client's bytes go
//! to an idle server connection, the server's bytes go back, and the server
//! connection is given back when its answer ends in ReadyForQuery 'I'.
//! It reads only the message framing of the server's answers. A client
//! that leaves in the middle of a transaction has its server connection
//! replaced. It has no error handling beyond ending the client or the
//! process, and it writes to a client without waiting when its socket is
//! full (pgbench's answers are small), which is why it must never be used
//! for anything but a benchmark.
//!
//! Usage: pgwarden-floor LISTEN_PORT SERVER_PORT USER DATABASE POOL_SIZE

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use wire::backend::{Authentication, BackendMessage, TxStatus};
use wire::frame::split_message;
use wire::startup::StartupPacket;

const SERVER_TAG: u64 = 1 << 63;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const LISTENER: u64 = u64::MAX;

struct Server {
    stream: TcpStream,
    client: Option<usize>,
    /// Bytes still to come of the message being read, and the header
    /// bytes read so far when a header is split between reads.
    rest: usize,
    header: [u8; 5],
    header_len: usize,
    /// The last complete message was ReadyForQuery with status 'I'.
    idle_at_end: bool,
}

enum Phase {
    Startup,
    Idle,
    Waiting,
    Active(usize),
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    pending: Vec<u8>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pgwarden-floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        return Err(io::Error::other(
            "usage: pgwarden-floor LISTEN_PORT SERVER_PORT USER DATABASE POOL_SIZE",
        ));
    }
    let bad = |what: &str| io::Error::other(format!("bad {what}"));
    let listen_port: u16 = args[1].parse().map_err(|_| bad("listen port"))?;
    let server_port: u16 = args[2].parse().map_err(|_| bad("server port"))?;
    let pool_size: usize = args[5].parse().map_err(|_| bad("pool size"))?;

    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
    listener.set_nonblocking(true)?;
    watch(epoll, listener.as_raw_fd(), LISTENER)?;

    let mut servers = Vec::with_capacity(pool_size);
    for i in 0..pool_size {
        let stream = server_login(server_port, &args[3], &args[4])?;
        watch(epoll, stream.as_raw_fd(), SERVER_TAG | i as u64)?;
        servers.push(Server::new(stream));
    }
    let mut idle: Vec<usize> = (0..pool_size).collect();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let login = canned_login();
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];

    loop {
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    let slot = free_slots.pop().unwrap_or_else(|| {
                        clients.push(None);
                        clients.len() - 1
                    });
                    watch(epoll, stream.as_raw_fd(), slot as u64)?;
                    clients[slot] = Some(Client {
                        stream,
                        phase: Phase::Startup,
                        pending: Vec::new(),
                    });
                }
            } else if token & SERVER_TAG != 0 {
                let s = (token & !SERVER_TAG) as usize;
                let got = match servers[s].stream.read(&mut buf) {
                    Ok(0) => return Err(io::Error::other("a server connection closed")),
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                let server = &mut servers[s];
                server.scan(&buf[..got]);
                let done = server.idle_at_end && server.rest == 0 && server.header_len == 0;
                // A client that is gone leaves the server to finish its
                // answer alone.
                if let Some(client) = server.client.and_then(|c| clients[c].as_mut()) {
                    let _ = client.stream.write_all(&buf[..got]);
                    if done {
                        client.phase = Phase::Idle;
                    }
                }
                if done {
                    servers[s].client = None;
                    hand_over(s, &mut servers, &mut idle, &mut waiting, &mut clients)?;
                }
            } else {
                let c = token as usize;
                let Some(client) = clients[c].as_mut() else {
                    continue;
                };
                let got = match client.stream.read(&mut buf) {
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => 0,
                };
                // A Terminate is never passed on (the server would close).
                let left = got == 0 || (!matches!(client.phase, Phase::Startup) && buf[0] == b'X');
                if left {
                    if let Some(s) = end_client(c, &mut clients, &mut free_slots, &mut waiting) {
                        // It left in the middle of a transaction: its server
                        // connection is replaced, not handed to another.
                        servers[s].replace(epoll, s, server_port, &args[3], &args[4])?;
                        hand_over(s, &mut servers, &mut idle, &mut waiting, &mut clients)?;
                    }
                    continue;
                }
                match client.phase {
                    Phase::Startup => {
                        client.pending.extend_from_slice(&buf[..got]);
                        // Only the request code is read (wire's decoder would
                        // also copy out every parameter: work a floor skips).
                        if client.pending.len() < 8 {
                            continue;
                        }
                        let word = |at: usize| {
                            u32::from_be_bytes([
                                client.pending[at],
                                client.pending[at + 1],
                                client.pending[at + 2],
                                client.pending[at + 3],
                            ])
                        };
                        if client.pending.len() < word(0) as usize {
                            continue;
                        }
                        let code = word(4);
                        client.pending.clear();
                        match code {
                            SSL_REQUEST | GSSENC_REQUEST => {
                                let _ = client.stream.write_all(b"N");
                            }
                            // Nothing to cancel here.
                            CANCEL_REQUEST => {
                                end_client(c, &mut clients, &mut free_slots, &mut waiting);
                            }
                            _ => {
                                let _ = client.stream.write_all(&login);
                                client.phase = Phase::Idle;
                            }
                        }
                    }
                    Phase::Idle => match idle.pop() {
                        Some(s) => {
                            client.phase = Phase::Active(s);
                            servers[s].client = Some(c);
                            servers[s].idle_at_end = false;
                            servers[s].stream.write_all(&buf[..got])?;
                        }
                        None => {
                            client.phase = Phase::Waiting;
                            client.pending.extend_from_slice(&buf[..got]);
                            waiting.push_back(c);
                        }
                    },
                    Phase::Waiting => client.pending.extend_from_slice(&buf[..got]),
                    Phase::Active(s) => {
                        servers[s].idle_at_end = false;
                        servers[s].stream.write_all(&buf[..got])?;
                    }
                }
            }
        }
    }
}

impl Server {
    fn new(stream: TcpStream) -> Self {
        Server {
            stream,
            client: None,
            rest: 0,
            header: [0; 5],
            header_len: 0,
            idle_at_end: false,
        }
    }

    /// Closes this server connection (with whatever transaction it is
    /// in) and opens a new one in its place.
    fn replace(
        &mut self,
        epoll: RawFd,
        s: usize,
        port: u16,
        user: &str,
        database: &str,
    ) -> io::Result<()> {
        let stream = server_login(port, user, database)?;
        watch(epoll, stream.as_raw_fd(), SERVER_TAG | s as u64)?;
        // The old stream closes here, which takes it out of the epoll set.
        *self = Server::new(stream);
        Ok(())
    }

    /// Follows the framing of the server's bytes and notes whether the last
    /// complete message was ReadyForQuery 'I'.
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.rest > 0 {
                let take = self.rest.min(bytes.len());
                if self.header[0] == b'Z' && take == self.rest {
                    self.idle_at_end = bytes[take - 1] == b'I';
                }
                self.rest -= take;
                bytes = &bytes[take..];
                continue;
            }
            let take = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 5 {
                let len = u32::from_be_bytes(self.header[1..5].try_into().unwrap()) as usize;
                self.rest = len.saturating_sub(4);
                self.header_len = 0;
                self.idle_at_end = false;
            }
        }
    }
}

/// Gives a server connection that has become idle to the first waiting
/// client, or to the idle list.
fn hand_over(
    s: usize,
    servers: &mut [Server],
    idle: &mut Vec<usize>,
    waiting: &mut VecDeque<usize>,
    clients: &mut [Option<Client>],
) -> io::Result<()> {
    while let Some(c) = waiting.pop_front() {
        let Some(client) = clients[c].as_mut() else {
            continue;
        };
        client.phase = Phase::Active(s);
        servers[s].client = Some(c);
        servers[s].idle_at_end = false;
        servers[s].stream.write_all(&client.pending)?;
        client.pending.clear();
        return Ok(());
    }
    idle.push(s);
    Ok(())
}

/// Ends a client; returns the server connection it held, if any.
fn end_client(
    c: usize,
    clients: &mut [Option<Client>],
    free_slots: &mut Vec<usize>,
    waiting: &mut VecDeque<usize>,
) -> Option<usize> {
    let client = clients[c].take()?;
    waiting.retain(|&w| w != c);
    free_slots.push(c);
    match client.phase {
        Phase::Active(s) => Some(s),
        _ => None,
    }
}

fn watch(epoll: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn canned_login() -> BytesMut {
    let mut out = BytesMut::new();
    BackendMessage::Authentication(Authentication::Ok).encode(&mut out);
    for (name, value) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        BackendMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        }
        .encode(&mut out);
    }
    BackendMessage::BackendKeyData { pid: 1, secret: 1 }.encode(&mut out);
    BackendMessage::ReadyForQuery(TxStatus::Idle).encode(&mut out);
    out
}

/// A blocking trust login to the server, left at ReadyForQuery.
fn server_login(port: u16, user: &str, database: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut packet = BytesMut::new();
    StartupPacket::Startup {
        minor: 0,
        params: vec![
            ("user".into(), user.into()),
            ("database".into(), database.into()),
        ],
    }
    .encode(&mut packet);
    stream.write_all(&packet)?;
    let mut buf = Vec::new();
    loop {
        let (header, body) = loop {
            if let Some((h, body)) = split_message(&buf, 1 << 20).map_err(io::Error::other)? {
                break (h, body.to_vec());
            }
            let mut more = [0u8; 4096];
            match stream.read(&mut more)? {
                0 => return Err(io::Error::other("the server closed during the login")),
                n => buf.extend_from_slice(&more[..n]),
            }
        };
        buf.drain(..header.total_len());
        match BackendMessage::decode(header.tag, &body).map_err(io::Error::other)? {
            BackendMessage::Authentication(Authentication::Ok) => {}
            BackendMessage::Authentication(_) => {
                return Err(io::Error::other(
                    "the server asks for a password (trust only)",
                ))
            }
            BackendMessage::ErrorResponse(e) => {
                return Err(io::Error::other(format!(
                    "the server refused the login: {e}"
                )))
            }
            BackendMessage::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    stream.set_nonblocking(true)?;
    Ok(stream)
}
