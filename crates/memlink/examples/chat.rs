//! Two terminals talk through a duplex channel: lines typed in one appear in the other.
//!
//! ```sh
//! cargo run --example chat -- NAME   # in one terminal
//! cargo run --example chat -- NAME   # in another, before or after the first
//! ```
//!
//! Whichever starts first waits for the other. Each line is one message; an empty message says
//! "my input has ended" (Ctrl-D), and each side exits once both have ended or the peer is gone.

use std::io::{BufRead, Write};

use memlink::Duplex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .ok_or("usage: chat NAME (the same NAME in both terminals)")?;
    eprintln!("waiting for the peer on '{name}'...");
    let chan = Duplex::open(&name)?;
    eprintln!(
        "connected to pid {}; type lines, Ctrl-D to end",
        chan.peer_pid()
    );
    // One half per thread: a receive and a send run at the same time, with no lock between them.
    let (mut outgoing, mut incoming) = chan.split();

    // The peer's lines, printed as they come.
    let printer = {
        std::thread::spawn(move || -> memlink::Result<()> {
            let mut message = Vec::new();
            loop {
                incoming.recv_into(&mut message)?; // reuses the buffer
                if message.is_empty() {
                    return Ok(()); // the peer's input has ended
                }
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&message);
                let _ = out.flush();
            }
        })
    };

    for line in std::io::stdin().lock().lines() {
        outgoing.send(format!("{}\n", line?).as_bytes())?;
    }
    outgoing.send(&[])?;
    printer
        .join()
        .map_err(|_| "the printer thread panicked")??;
    Ok(())
}
