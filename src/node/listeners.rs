//! Creating the node's listening sockets, refusing any port another process already holds.
//!
//! Owns socket options and the port-in-use check. It never accepts or serves: sockets are
//! handed, bound and listening, to the shard executors.
//!
//! glommio's own `TcpListener::bind` always sets SO_REUSEPORT, so a second node on the same
//! port would silently split the first one's traffic. Here the shared client port is first
//! claimed by a probe socket *without* SO_REUSEPORT, which fails if anyone holds the port; only
//! then do our own shards bind it with SO_REUSEPORT. Shard ports are never shared.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{addr} is already in use (is another node running there?)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Other { addr: SocketAddr, source: io::Error },
}

fn bind_error(addr: SocketAddr, source: io::Error) -> BindError {
    if source.kind() == io::ErrorKind::AddrInUse {
        BindError::InUse { addr }
    } else {
        BindError::Other { addr, source }
    }
}

fn socket_for(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets us rebind over connections in TIME_WAIT after a restart; Linux
    // still refuses it while another socket listens on the port.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds `count` listeners on `addr`, shared by our shards through SO_REUSEPORT, after checking
/// that no other process holds the port. Port 0 picks one free port for all of them.
pub fn bind_shared(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, BindError> {
    let probe = socket_for(addr, false).map_err(|e| bind_error(addr, e))?;
    probe.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
    let chosen = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| bind_error(addr, io::Error::other("no local address")))?;
    drop(probe);
    (0..count)
        .map(|_| {
            let socket = socket_for(chosen, true).map_err(|e| bind_error(chosen, e))?;
            socket
                .bind(&chosen.into())
                .and_then(|()| socket.listen(LISTEN_BACKLOG))
                .map_err(|e| bind_error(chosen, e))?;
            Ok(socket.into())
        })
        .collect()
}

/// Binds one exclusive listener per address (the shard-aware ports).
pub fn bind_each(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    addrs
        .iter()
        .map(|&addr| {
            let socket = socket_for(addr, false).map_err(|e| bind_error(addr, e))?;
            socket
                .bind(&addr.into())
                .and_then(|()| socket.listen(LISTEN_BACKLOG))
                .map_err(|e| bind_error(addr, e))?;
            Ok(socket.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_port_held_by_another_socket_is_refused() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(
            first[1].local_addr().unwrap(),
            addr,
            "our shards share one port"
        );
        match bind_shared(addr, 2) {
            Err(BindError::InUse { addr: refused }) => assert_eq!(refused, addr),
            other => panic!("a second bind of {addr} was not refused: {other:?}"),
        }
        match bind_each(&[addr]) {
            Err(BindError::InUse { .. }) => {}
            other => panic!("a shard port on {addr} was not refused: {other:?}"),
        }
    }

    #[test]
    fn an_exclusive_port_blocks_a_shared_bind() {
        let held = bind_each(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let addr = held[0].local_addr().unwrap();
        assert!(matches!(bind_shared(addr, 1), Err(BindError::InUse { .. })));
    }
}
