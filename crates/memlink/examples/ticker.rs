//! Seed 004's demo: one producer writes price ticks that several consumer processes read, each
//! with a handler running on a background thread.
//!
//! ```sh
//! cargo run --example ticker                 # starts 3 consumers, then produces 20 ticks
//! cargo run --example ticker -- consume T    # or run a consumer of topic T by hand
//! ```
//!
//! The producer fills each tick in place in shared memory (`loan`), and every consumer reads it
//! where it lies. Consumers may start before the producer (they wait for it); one that falls
//! behind is told how many ticks it missed.

use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use memlink::{Error, Publisher, Subscriber};

/// A tick: sequence number, price in hundredths, and a symbol.
fn encode(tick: u64, price: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&tick.to_le_bytes());
    out[8..16].copy_from_slice(&price.to_le_bytes());
    out[16..].copy_from_slice(b"MEML");
}

fn decode(bytes: &[u8]) -> Option<(u64, u64, &str)> {
    let tick = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let price = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((tick, price, std::str::from_utf8(bytes.get(16..)?).ok()?))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["consume", topic] => consume(topic, "consumer"),
        ["consume", topic, label] => consume(topic, label),
        [] => produce(),
        _ => Err("usage: ticker | ticker consume TOPIC".into()),
    }
}

fn produce() -> Result<(), Box<dyn std::error::Error>> {
    let topic = format!("ticker-{}", std::process::id());
    let exe = std::env::current_exe()?;
    // The consumers first: they wait for the producer.
    let mut consumers = (1..=3)
        .map(|i| {
            Command::new(&exe)
                .args(["consume", &topic, &format!("consumer {i}")])
                .stdin(Stdio::null())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut publisher = Publisher::options().capacity(16).create(&topic)?;
    while publisher.subscriber_count() < consumers.len() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut price = 10_000u64;
    for tick in 0..20u64 {
        price = price.wrapping_add(tick * 37 % 11).wrapping_sub(5);
        let mut sample = publisher.loan(20)?; // a slot of shared memory, filled in place
        encode(tick, price, &mut sample);
        sample.send()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(publisher); // the consumers see the end
    for consumer in &mut consumers {
        consumer.wait()?;
    }
    Ok(())
}

fn consume(topic: &str, label: &str) -> Result<(), Box<dyn std::error::Error>> {
    let subscriber = Subscriber::subscribe(topic)?;
    let (done, finished) = channel();
    let name = label.to_owned();
    // The handler runs on its own thread until `handler` is dropped.
    let handler = subscriber.on_message(move |sample| match sample {
        Ok(sample) => match decode(&sample) {
            Some((tick, price, symbol)) => println!(
                "{name}: tick {tick:>2} {symbol} {}.{:02}",
                price / 100,
                price % 100
            ),
            None => eprintln!("{name}: a sample that is not a tick"),
        },
        Err(Error::Lagged { missed, .. }) => eprintln!("{name}: missed {missed} ticks"),
        Err(Error::Disconnected { .. }) => {
            let _ = done.send("the producer is gone".to_owned());
        }
        Err(e) => {
            let _ = done.send(e.to_string());
        }
    })?;
    let why = finished.recv()?;
    drop(handler);
    eprintln!("{label}: stopped: {why}");
    Ok(())
}
