//! Servers started on demand, across real processes. The server side: idle exit, and a server
//! that stops accepting frees its name at once.

mod common;

use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{WATCHDOG, Watchdog, unique_name, with_watchdog};
use memlink::rpc::server_stats;
use memlink::{Client, Error, Server};

#[test]
fn child_main() {
    common::run_child(&[]);
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WATCHDOG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- the server side -----------------------------------------------------------------------------

#[test]
fn an_idle_server_exits_once_its_last_client_has_gone() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("idle");
    let idle = Duration::from_millis(200);
    let server = Server::options().exit_when_idle(idle).bind(&name).unwrap();
    let serving = std::thread::spawn(move || {
        server.serve(|request: &[u8], reply: &mut Vec<u8>| reply.extend_from_slice(request))
    });
    let client = Client::connect(&name).unwrap();
    assert_eq!(client.call(b"one").unwrap(), b"one");
    // A connected client keeps it, however long it stays quiet.
    std::thread::sleep(idle * 4);
    assert!(!serving.is_finished(), "exited with a client connected");
    assert_eq!(client.call(b"two").unwrap(), b"two");
    drop(client);
    // Statistics queries do not keep it running.
    wait_until("the idle server to stop serving", || {
        matches!(server_stats(&name), Err(Error::NotRunning { .. }))
    });
    with_watchdog("serve to return", move || serving.join().unwrap()).unwrap();
    assert!(matches!(
        Client::connect(&name),
        Err(Error::NotRunning { .. })
    ));
}

#[test]
fn a_server_that_stops_accepting_frees_its_name_while_it_finishes_its_calls() {
    let _watchdog = Watchdog::arm();
    let name = unique_name("successor");
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let (entered_tx, released) = (Mutex::new(entered_tx), Mutex::new(released));
    let server = Server::bind(&name).unwrap();
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || {
        server.serve(move |_request: &[u8], reply: &mut Vec<u8>| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = released.lock().unwrap().recv();
            reply.extend_from_slice(b"done");
        })
    });
    let client = Client::connect(&name).unwrap();
    let in_flight = std::thread::spawn(move || client.call(b"slow"));
    entered.recv_timeout(WATCHDOG).unwrap();
    stop.shutdown();
    wait_until("the acceptor to stop", || {
        matches!(server_stats(&name), Err(Error::NotRunning { .. }))
    });
    // The call is still in its handler, and a successor can take the name.
    let successor = Server::bind(&name);
    release.send(()).unwrap();
    assert!(successor.is_ok(), "{successor:?}");
    drop(successor);
    assert_eq!(
        with_watchdog("the call in flight", move || in_flight.join().unwrap()).unwrap(),
        b"done"
    );
    with_watchdog("serve to return", move || serving.join().unwrap()).unwrap();
}
