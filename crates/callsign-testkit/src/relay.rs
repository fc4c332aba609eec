//! A TCP relay on 127.0.0.1 that a test can cut, restore and point elsewhere: a network
//! between two real components (a node and PostgreSQL, a verifier and a server) that fails on
//! cue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Relays every connection to its port on to `127.0.0.1:<target>`.
#[derive(Debug)]
pub struct Relay {
    /// The port it listens on.
    pub port: u16,
    target: Arc<AtomicU16>,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    /// Listens on a free port and relays to `target`.
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut relay = Relay {
            port,
            target: Arc::new(AtomicU16::new(target)),
            tasks: None,
        };
        relay.serve(listener);
        relay
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = Arc::clone(&self.target);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                let port = target.load(Ordering::SeqCst);
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Connections made from now on go to `target` (those open stay where they are).
    pub fn retarget(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
    }

    /// Drops the listener and every relayed connection: connecting fails at once.
    pub fn cut(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
    }

    /// Listens on the same port again (waiting up to 10 s for it to be free).
    pub async fn restore(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind the relay port: {e}"),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
