//! An async memlink client (feature `tokio`): a hundred slow calls in flight from one thread, a
//! call abandoned part-way (its reply is discarded, never delivered to the next call), and a
//! quick call after it.
//!
//! ```sh
//! cargo run --example async_server --features tokio            # in one terminal
//! cargo run --example async_client --features tokio            # in another
//! ```

use std::time::{Duration, Instant};

use memlink::ClientOptions;

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
    runtime.block_on(async {
        let client = ClientOptions::new()
            .max_concurrent_calls(100)
            .connect_async_timeout(&name, Duration::from_secs(5))
            .await?;
        println!(
            "{:?}",
            String::from_utf8_lossy(&client.call(b"hello").await?)
        );

        // A hundred calls whose handler awaits 200 ms: one thread here, one there, ~200 ms.
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let client = client.clone();
            calls.spawn(async move { client.call(b"slow").await });
        }
        while let Some(done) = calls.join_next().await {
            done.map_err(|e| memlink::Error::Os {
                op: "joining a task",
                source: std::io::Error::other(e),
            })??;
        }
        println!("100 slow calls in {:?}", started.elapsed());

        // Give up on a call: the future is dropped; its reply, when it comes, is discarded.
        let abandoned = tokio::time::timeout(Duration::from_millis(10), client.call(b"slow")).await;
        println!("abandoned: {}", abandoned.is_err());
        println!(
            "{:?}",
            String::from_utf8_lossy(&client.call(b"next").await?)
        );
        Ok(())
    })
}
