//! An async memlink server (feature `tokio`): each handler awaits (here a timer standing in for
//! a database or a network call), and one thread serves every client meanwhile.
//!
//! ```sh
//! cargo run --example async_server --features tokio            # serves "async-echo"; Ctrl-D stops it
//! cargo run --example async_client --features tokio            # in another terminal
//! ```
//!
//! A request `slow` answers after 200 ms; anything else is echoed back at once. Clients may be
//! blocking ([`memlink::Client`]) or async ([`memlink::AsyncClient`]): the wire is the same.

use std::time::Duration;

use memlink::Server;

fn main() -> memlink::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "async-echo".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| memlink::Error::Os {
            op: "starting a tokio runtime",
            source: e,
        })?;
    let server = Server::bind(&name)?;
    let stop = server.shutdown_handle();
    println!("serving {name:?} (Ctrl-D or closing stdin stops it gracefully)");
    runtime.block_on(async move {
        // End of stdin: stop accepting, let calls in flight finish, then `serve_async` returns.
        // (`ShutdownHandle::shutdown` may also be called from a signal handler.)
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop.shutdown();
        });
        server
            .serve_async(|request: Vec<u8>| async move {
                if request == b"slow" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return b"slow reply".to_vec();
                }
                request
            })
            .await
    })?;
    println!("stopped");
    Ok(())
}
