//! Tunnels to a TCP port and the listening ports (the agent runs on the host here, so its
//! loopback is the host's).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use faas_agent::{read_frame, write_json, ErrorKind, Event, Request};

use super::start;

fn answer(conn: &mut UnixStream) -> Event {
    let (_, p) = read_frame(conn).unwrap().unwrap();
    serde_json::from_slice(&p).unwrap()
}

fn open(socket: &std::path::Path, port: u16) -> (UnixStream, Event) {
    let mut conn = UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write_json(&mut conn, &Request::Tunnel { port }).unwrap();
    let ev = answer(&mut conn);
    (conn, ev)
}

#[test]
fn a_tunnel_carries_bytes_both_ways_and_passes_half_closes_on() {
    let a = start();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // Upper-cases what it reads until the end of its input, then says how much it read.
    let srv = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            s.write_all(&buf[..n].to_ascii_uppercase()).unwrap();
        }
        s.write_all(format!("[{}]", got.len()).as_bytes()).unwrap();
        got.len()
    });
    let (mut conn, ev) = open(&a.socket, port);
    assert_eq!(ev, Event::Tunneled);
    conn.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HELLO");
    // More than the agent's buffers, written while nobody reads the answer yet.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let send = big.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&send).unwrap();
        // Our end of input reaches the server as its end of input.
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    let total = srv.join().unwrap();
    assert_eq!(total, 5 + big.len());
    let mut want = big.to_ascii_uppercase();
    want.extend_from_slice(format!("[{total}]").as_bytes());
    assert_eq!(back.len(), want.len());
    assert!(back == want, "the bytes came back changed");
}

#[test]
fn the_host_going_away_closes_the_port_connection() {
    let a = start();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let (mut conn, ev) = open(&a.socket, port);
    assert_eq!(ev, Event::Tunneled);
    let (mut s, _) = server.accept().unwrap();
    conn.write_all(b"last words").unwrap();
    drop(conn);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn a_closed_port_is_refused_and_port_zero_is_invalid() {
    let a = start();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    match open(&a.socket, port).1 {
        Event::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Refused, "{message}");
            assert!(message.contains(&port.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match open(&a.socket, 0).1 {
        Event::Error { kind, .. } => assert_eq!(kind, ErrorKind::Invalid),
        other => panic!("{other:?}"),
    }
}

#[test]
fn listening_ports_are_listed() {
    let a = start();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let mut conn = UnixStream::connect(&a.socket).unwrap();
    write_json(&mut conn, &Request::Ports).unwrap();
    let Event::Ports { ports } = answer(&mut conn) else {
        panic!("not a ports answer")
    };
    assert!(
        ports
            .iter()
            .any(|p| p.port == port && p.address == "127.0.0.1"),
        "{ports:?}"
    );
}
