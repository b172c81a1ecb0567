//! Ports: a tunnel from the host's connection to a TCP port of the box's loopback, and the
//! box's listening sockets.
//!
//! A tunnel runs on the thread serving its connection: one `poll` loop moves bytes both ways
//! through a buffer per direction (a full buffer stops reading that side until the other
//! takes it, so neither side can make the agent hold more than 64 KiB each way). The end of
//! one side's input is passed on as a shut-down write half; the host closing its connection
//! ends the tunnel (what it sent is still delivered), and so does an error on either side.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use faas_agent::{write_json, ErrorKind, Event, ListeningPort};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long connecting to the port may take (it is the box's own loopback: a listener
/// answers at once, a full backlog is the one thing that waits).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes held per direction.
const BUFFER: usize = 64 * 1024;
/// How long the last bytes of a host that went away may take to be written to the port.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// [`faas_agent::Request::Tunnel`].
pub(crate) fn tunnel(mut conn: UnixStream, port: u16) -> io::Result<()> {
    if port == 0 {
        return write_json(
            &mut conn,
            &Event::error(ErrorKind::Invalid, "port 0 is not a port"),
        );
    }
    let tcp = match connect(port) {
        Ok(tcp) => tcp,
        Err(e) => {
            let kind = match e.kind() {
                io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
                _ => ErrorKind::Other,
            };
            return write_json(
                &mut conn,
                &Event::error(kind, format!("connect to port {port}: {e}")),
            );
        }
    };
    let _ = tcp.set_nodelay(true);
    write_json(&mut conn, &Event::Tunneled)?;
    // A reset or a broken pipe is how tunnels often end: not worth a line in the box's log.
    let _ = Pipe::new(conn, tcp).and_then(Pipe::run);
    Ok(())
}

/// `127.0.0.1:port`, else `[::1]:port` (a server may listen on IPv6 only); the IPv4 error
/// when neither takes it.
fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        }
        r => r,
    }
}

/// Bytes read from one side and not yet written to the other.
struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Its input ended.
    eof: bool,
    /// The end was passed on (the other side's write half is shut down).
    shut: bool,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            shut: false,
        }
    }

    fn empty(&self) -> bool {
        self.start == self.end
    }

    /// Wants to read: its input goes on and nothing waits to be written.
    fn reading(&self) -> bool {
        !self.eof && self.empty()
    }

    /// Reads what `from` has; `Ok(false)` when nothing was there.
    fn fill(&mut self, from: &mut impl Read) -> io::Result<bool> {
        match from.read(&mut self.buf) {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                (self.start, self.end) = (0, n);
                Ok(true)
            }
            Err(e) if retry(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes what it holds to `to`, as much as it takes now; then passes on an end of input.
    fn drain(
        &mut self,
        to: &mut impl Write,
        shut: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        while !self.empty() {
            match to.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if retry(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.eof && !self.shut {
            self.shut = true;
            // The other side may be gone already: nothing more to tell it.
            let _ = shut();
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.shut
    }
}

fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// The host's connection and the port's, and what is on the way between them.
struct Pipe {
    host: UnixStream,
    port: TcpStream,
    /// Host → port.
    up: Half,
    /// Port → host.
    down: Half,
}

impl Pipe {
    fn new(host: UnixStream, port: TcpStream) -> io::Result<Pipe> {
        host.set_nonblocking(true)?;
        port.set_nonblocking(true)?;
        Ok(Pipe {
            host,
            port,
            up: Half::new(),
            down: Half::new(),
        })
    }

    fn run(mut self) -> io::Result<()> {
        loop {
            if self.up.done() && self.down.done() {
                return Ok(());
            }
            let mut host_ev = PollFlags::empty();
            let mut port_ev = PollFlags::empty();
            if self.up.reading() {
                host_ev |= PollFlags::POLLIN;
            }
            if !self.up.empty() {
                port_ev |= PollFlags::POLLOUT;
            }
            if self.down.reading() {
                port_ev |= PollFlags::POLLIN;
            }
            if !self.down.empty() {
                host_ev |= PollFlags::POLLOUT;
            }
            let (host_rev, port_rev) = {
                let mut fds = [
                    PollFd::new(self.host.as_fd(), host_ev),
                    PollFd::new(self.port.as_fd(), port_ev),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                (
                    fds[0].revents().unwrap_or(PollFlags::empty()),
                    fds[1].revents().unwrap_or(PollFlags::empty()),
                )
            };
            if host_rev.contains(PollFlags::POLLERR) || port_rev.contains(PollFlags::POLLERR) {
                return Ok(());
            }
            let readable = PollFlags::POLLIN | PollFlags::POLLHUP;
            if self.up.reading() && host_rev.intersects(readable) {
                self.up.fill(&mut self.host)?;
            }
            if self.down.reading() && port_rev.intersects(readable) {
                self.down.fill(&mut self.port)?;
            }
            // Written at once (no poll round for a socket that takes them, which is nearly
            // always); a full one is polled for room.
            let port = &self.port;
            self.up
                .drain(&mut &self.port, || port.shutdown(Shutdown::Write))?;
            let host = &self.host;
            self.down
                .drain(&mut &self.host, || host.shutdown(Shutdown::Write))?;
            if host_rev.contains(PollFlags::POLLHUP) {
                // The host closed its connection (or both its halves are shut): what it sent
                // goes to the port, and nothing can go back.
                return self.last_words();
            }
            if port_rev.contains(PollFlags::POLLHUP) && self.down.done() {
                // The port's connection is closed both ways (or was reset): nothing more
                // can be written to it.
                return Ok(());
            }
        }
    }

    /// Writes what the host sent before it went to the port, within [`LAST_WRITE`].
    fn last_words(mut self) -> io::Result<()> {
        self.port.set_nonblocking(false)?;
        self.port.set_write_timeout(Some(LAST_WRITE))?;
        // The host is gone: what it sent is all there, so reading it does not wait.
        self.host.set_nonblocking(false)?;
        let (mut host, mut port) = (&self.host, &self.port);
        let up = &mut self.up;
        loop {
            port.write_all(&up.buf[up.start..up.end])?;
            up.start = up.end;
            if up.eof {
                let _ = port.shutdown(Shutdown::Write);
                return Ok(());
            }
            match host.read(&mut up.buf)? {
                0 => up.eof = true,
                n => (up.start, up.end) = (0, n),
            }
        }
    }
}

/// [`faas_agent::Request::Ports`]: sockets in state `LISTEN` (`0A`) of `/proc/net/tcp` and
/// `/proc/net/tcp6`.
pub(crate) fn ports() -> Event {
    let mut ports = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        // A box without IPv6 has no tcp6.
        if let Ok(text) = std::fs::read_to_string(file) {
            ports.extend(text.lines().skip(1).filter_map(|l| listening(l, v6)));
        }
    }
    ports.sort();
    ports.dedup();
    Event::Ports { ports }
}

/// One line of `/proc/net/tcp{,6}`: `sl local_address rem_address st ...`, the address in
/// hex 32-bit words of the kernel's byte order, the port in hex.
fn listening(line: &str, v6: bool) -> Option<ListeningPort> {
    let mut cols = line.split_whitespace();
    let local = cols.nth(1)?;
    let state = cols.nth(1)?;
    if state != "0A" {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let address = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        Ipv6Addr::from(b).to_string()
    } else {
        if addr.len() != 8 {
            return None;
        }
        Ipv4Addr::from(word(0)?).to_string()
    };
    Some(ListeningPort { port, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines() {
        let l = "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            listening(l, false),
            Some(ListeningPort {
                port: 8000,
                address: "0.0.0.0".into()
            })
        );
        let l = "   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1";
        assert_eq!(listening(l, false).unwrap().address, "127.0.0.1");
        // An established connection is not a listener.
        let l = "   2: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1";
        assert_eq!(listening(l, false), None);
        let l = "   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1";
        assert_eq!(listening(l, true).unwrap().address, "::");
        let l = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0";
        assert_eq!(listening(l, true).unwrap().address, "::1");
        assert_eq!(listening("garbage", false), None);
        assert_eq!(listening("0: zz:1 0 0A", false), None);
    }
}
